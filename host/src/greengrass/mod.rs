//! The Greengrass nucleus, as the component sees it: where the configuration
//! comes from, the component state it reports, and the one IPC connection
//! that carries both (and, as a [`crate::publish::Transport`], reports and
//! local alarm events).
//!
//! [`Nucleus::start`] decides the configuration source once, at start-up:
//! a configuration file when one is given, else the component configuration
//! the nucleus holds (which `run` then follows live), else the defaults. The
//! IPC client's own settings (`publish.ipc`) are part of that configuration,
//! so when it comes from the nucleus the client connects with the defaults
//! first and connects again only if the configuration asks for other
//! settings.
//!
//! [`ipc`] is the wire: the event-stream codec, the connection, the RPC
//! bodies and the reconnecting client; it knows nothing of Device Defender.

pub mod ipc;

use anyhow::Context;
use tracing::warn;

use crate::config::Config;
use crate::publish::IpcConfig;
use crate::status::Status;
use ipc::{ComponentState, ConfigurationUpdates, IpcClient, IpcEndpoint, IpcOptions};

/// The configuration `run` starts with, and the nucleus when the process is
/// a Greengrass component.
#[derive(Debug)]
pub struct Start {
    pub config: Config,
    pub nucleus: Option<Nucleus>,
    /// The configuration came from the nucleus: updates are to be followed.
    pub live_configuration: bool,
}

/// The component's connection to its nucleus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nucleus {
    client: IpcClient,
}

impl Nucleus {
    /// Connects when the process runs as a Greengrass component
    /// (`AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT` and `SVCUID`
    /// set) and settles the configuration: `file` when given, else the
    /// nucleus's, else the defaults. A component configuration that cannot
    /// be read or is invalid is reported to the nucleus as ERRORED.
    pub async fn start(file: Option<Config>, status: &Status) -> anyhow::Result<Start> {
        let Some(endpoint) = IpcEndpoint::from_env() else {
            return Ok(Start {
                config: file.unwrap_or_default(),
                nucleus: None,
                live_configuration: false,
            });
        };
        let settings = file.as_ref().map(|c| &c.publish.ipc);
        let nucleus = Nucleus::connect(&endpoint, settings, status).await?;
        if let Some(config) = file {
            return Ok(Start {
                config,
                nucleus: Some(nucleus),
                live_configuration: false,
            });
        }
        let config = match nucleus.configuration().await {
            Ok(config) => config,
            Err(error) => {
                nucleus.errored().await;
                return Err(error);
            }
        };
        // The first connection used the default client settings, because
        // the configuration was not known yet.
        let nucleus = if config.publish.ipc != IpcConfig::default() {
            Nucleus::connect(&endpoint, Some(&config.publish.ipc), status).await?
        } else {
            nucleus
        };
        Ok(Start {
            config,
            nucleus: Some(nucleus),
            live_configuration: true,
        })
    }

    /// The component configuration when the process runs as a Greengrass
    /// component, `None` elsewhere; reports no state to the nucleus (for
    /// `config check`).
    pub async fn read_configuration(status: &Status) -> anyhow::Result<Option<Config>> {
        let Some(endpoint) = IpcEndpoint::from_env() else {
            return Ok(None);
        };
        let nucleus = Nucleus::connect(&endpoint, None, status).await?;
        Ok(Some(nucleus.configuration().await?))
    }

    /// Connects with the client settings of `publish.ipc`, or the defaults.
    async fn connect(
        endpoint: &IpcEndpoint,
        settings: Option<&IpcConfig>,
        status: &Status,
    ) -> anyhow::Result<Nucleus> {
        let options = IpcOptions {
            status: Some(status.clone()),
            ..settings.map_or_else(IpcOptions::default, IpcOptions::from)
        };
        let client = IpcClient::connect(&endpoint.socket_path, &endpoint.svcuid, options)
            .await
            .context("connecting to the Greengrass nucleus")?;
        Ok(Nucleus { client })
    }

    /// The IPC client: the transport for reports and local publishing.
    pub fn client(&self) -> &IpcClient {
        &self.client
    }

    /// Reads the component configuration: the whole document, without the
    /// recipe's `accessControl` (which is the nucleus's business, not a
    /// setting of ours).
    pub async fn configuration(&self) -> anyhow::Result<Config> {
        let mut value = self
            .client
            .get_configuration(&[])
            .await
            .context("reading the component configuration from the Greengrass nucleus")?;
        if let Some(map) = value.as_object_mut() {
            map.remove("accessControl");
        }
        Ok(Config::from_value(
            value,
            "the Greengrass component configuration",
        )?)
    }

    /// Announcements of configuration changes: each is the key path that
    /// changed; read the document again with [`Nucleus::configuration`].
    pub async fn configuration_updates(&self) -> anyhow::Result<ConfigurationUpdates> {
        self.client
            .subscribe_to_configuration_update(&[])
            .await
            .context("subscribing to configuration updates from the Greengrass nucleus")
    }

    /// Tells the nucleus the component runs; a failure is logged, since the
    /// component runs all the same.
    pub async fn running(&self) {
        if let Err(error) = self.client.update_state(ComponentState::Running).await {
            warn!(%error, "cannot report the RUNNING state to the nucleus");
        }
    }

    /// Tells the nucleus the component failed, before it exits with an
    /// error; there is nothing left to do if that fails too.
    pub async fn errored(&self) {
        let _ = self.client.update_state(ComponentState::Errored).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_section_asks_for_the_client_defaults() {
        let from_section = IpcOptions::from(&IpcConfig::default());
        let defaults = IpcOptions::default();
        assert_eq!(from_section.request_timeout, defaults.request_timeout);
        assert_eq!(from_section.max_frame_bytes, defaults.max_frame_bytes);
        assert_eq!(
            from_section.max_incoming_frame_bytes,
            defaults.max_incoming_frame_bytes
        );
    }
}
