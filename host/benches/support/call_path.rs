//! The bare plugin call, made the way the host made it before issue 11 and
//! the way it makes it now, on the same engine, component and input, so the
//! difference is the call path alone:
//! - **old**: WASI linked synchronously, a 10 ms epoch ticker running all
//!   the time, `set_epoch_deadline` and a synchronous `call_process`;
//! - **new**: WASI linked asynchronously, the host's own `Calls` (watchdog
//!   thread armed for the call, a current-thread tokio runtime with a
//!   timeout, see host/src/plugin/call.rs) and the store's epoch callback.
//!
//! Conversion of the sample and validation of the output are the same on
//! both paths and are left out; `per_call` in plugin.rs has the whole call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use defender_edge::plugin::Calls;
use defender_edge::sample::Sample;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod sync_bindings {
    wasmtime::component::bindgen!({ world: "plugin", path: "../wit" });
}

mod async_bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        exports: { default: async },
        with: {
            "defender:plugin/types": super::sync_bindings::defender::plugin::types,
            "defender:plugin/log": super::sync_bindings::defender::plugin::log,
        },
    });
}

use sync_bindings::defender::plugin::{log, types as wit};

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    deadline: Instant,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for State {}

impl log::Host for State {
    fn log(&mut self, _: log::Level, _: String) {}
}

/// Long enough that a call never runs out of it, even on a loaded machine:
/// only the cost of arming and checking a deadline is measured.
const BUDGET: Duration = Duration::from_secs(10);

/// One component, callable both ways.
pub struct Paths {
    old_store: Store<State>,
    old: sync_bindings::Plugin,
    new_store: Store<State>,
    new: async_bindings::Plugin,
    calls: Calls,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Paths {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn store(engine: &Engine) -> Store<State> {
    Store::new(
        engine,
        State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            deadline: Instant::now(),
        },
    )
}

impl Paths {
    /// `wasm`: a plugin component; `config`: its init configuration.
    pub fn new(wasm: &[u8], config: &[(String, String)]) -> Paths {
        let mut engine_config = Config::new();
        engine_config.epoch_interruption(true);
        engine_config.wasm_threads(false);
        let engine = Engine::new(&engine_config).unwrap();
        let component = Component::new(&engine, wasm).unwrap();

        // The old path: ticker, sync WASI, sync calls.
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.clone(), stop_ticker.clone());
        std::thread::spawn(move || {
            while !ticker_stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                ticker_engine.increment_epoch();
            }
        });
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        sync_bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
        let mut old_store = store(&engine);
        old_store.set_epoch_deadline(101);
        let old = sync_bindings::Plugin::instantiate(&mut old_store, &component, &linker).unwrap();
        old.defender_plugin_processor()
            .call_init(&mut old_store, config)
            .unwrap()
            .unwrap();

        // The new path: async WASI, the host's Calls, the epoch callback.
        let calls = Calls::new(&engine).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        async_bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).unwrap();
        let mut new_store = store(&engine);
        new_store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        let pre =
            async_bindings::PluginPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        let deadline = arm(&mut new_store, Duration::from_secs(1));
        let new = calls
            .run(deadline, async {
                let new = pre.instantiate_async(&mut new_store).await.unwrap();
                new.defender_plugin_processor()
                    .call_init(&mut new_store, config)
                    .await
                    .unwrap()
                    .unwrap();
                new
            })
            .unwrap();
        Paths {
            old_store,
            old,
            new_store,
            new,
            calls,
            stop_ticker,
        }
    }

    pub fn old(&mut self, input: &wit::Sample) -> bool {
        self.old_store
            .set_epoch_deadline(BUDGET.as_millis() as u64 / 10 + 1);
        self.old
            .defender_plugin_processor()
            .call_process(&mut self.old_store, input)
            .unwrap()
            .is_ok()
    }

    pub fn new_path(&mut self, input: &wit::Sample) -> bool {
        let deadline = arm(&mut self.new_store, BUDGET);
        self.calls
            .run(
                deadline,
                self.new
                    .defender_plugin_processor()
                    .call_process(&mut self.new_store, input),
            )
            .unwrap()
            .unwrap()
            .is_ok()
    }
}

fn arm(store: &mut Store<State>, budget: Duration) -> Instant {
    let deadline = Instant::now() + budget;
    store.data_mut().deadline = deadline;
    store.set_epoch_deadline(1);
    deadline
}

/// The sample as a plugin receives it.
pub fn to_wit(s: &Sample) -> wit::Sample {
    let port = |p: &defender_edge::sample::ListeningPort| wit::ListeningPort {
        port: p.port,
        interface: p.interface.clone(),
    };
    wit::Sample {
        thing: s.thing.clone(),
        timestamp_ms: s.timestamp_ms,
        listening_tcp_ports: s.listening_tcp_ports.iter().map(port).collect(),
        listening_udp_ports: s.listening_udp_ports.iter().map(port).collect(),
        established_connections: s
            .established_connections
            .iter()
            .map(|c| wit::Connection {
                remote_addr: c.remote_addr.to_string(),
                local_port: c.local_port,
                local_interface: c.local_interface.clone(),
            })
            .collect(),
        network_stats: None,
        custom_metrics: Vec::new(),
        annotations: Vec::new(),
        alerts: Vec::new(),
    }
}
