//! The app's search-time knowledge applied to one HEC event, in Splunk's
//! order: default and indexed fields, JSON extraction (KV_MODE = json),
//! field aliases, calculated fields (EVAL-), event types, tags.
//!
//! Loading refuses every setting, file and construct this model does not
//! implement, so a test through it never checks less than the app does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value as Json;

use super::conf::Conf;
use super::eval::{Expr, Fields, assigned};
use super::search::Search;

/// The sourcetype the app's props.conf describes (the agent's default).
pub const SOURCETYPE: &str = "aws_iot_device_defender";

/// props.conf settings with no effect on search-time fields.
const NO_SEARCH_TIME_EFFECT: &[&str] = &[
    "SHOULD_LINEMERGE",
    "TRUNCATE",
    "category",
    "description",
    "pulldown_type",
];

/// Files under default/ and what the model makes of them; any other file is
/// refused.
const DEFAULT_FILES: &[&str] = &[
    "app.conf",
    "props.conf",
    "eventtypes.conf",
    "tags.conf",
    // Searches only; they add no fields to events.
    "macros.conf",
    "savedsearches.conf",
];

// The field mappings are checked against events the agent produced, which
// needs the Firehose sink; without it only the searches are.
#[derive(Debug)]
#[cfg_attr(not(feature = "firehose"), allow(dead_code))]
pub struct App {
    /// (source, alias) pairs of every FIELDALIAS-.
    aliases: Vec<(String, String)>,
    /// (field, expression) of every EVAL-.
    evals: Vec<(String, Expr)>,
    eventtypes: Vec<(String, Search)>,
    /// Event type to its enabled tags.
    tags: BTreeMap<String, Vec<String>>,
}

impl App {
    /// Loads `<dir>/default`.
    pub fn load(dir: &Path) -> Result<App, String> {
        let default = dir.join("default");
        for entry in std::fs::read_dir(&default)
            .map_err(|e| format!("cannot list {}: {e}", default.display()))?
        {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && !DEFAULT_FILES.contains(&name.as_str()) {
                return Err(format!(
                    "default/{name} is not modelled by tests/integration/splunk (it may carry \
                     search-time knowledge: implement it there first)"
                ));
            }
        }
        let props = Conf::read(&default.join("props.conf"))?;
        let (aliases, evals) = props_settings(&props)?;
        let eventtypes = Conf::read(&default.join("eventtypes.conf"))?
            .stanzas
            .into_iter()
            .map(|s| {
                for (key, _) in &s.settings {
                    if !matches!(key.as_str(), "search" | "description") {
                        return Err(format!(
                            "eventtypes.conf [{}] {key} not implemented",
                            s.name
                        ));
                    }
                }
                let search = s
                    .get("search")
                    .ok_or_else(|| format!("eventtypes.conf [{}] has no search", s.name))?;
                let search = Search::parse(search)
                    .map_err(|e| format!("eventtypes.conf [{}] search: {e}", s.name))?;
                Ok((s.name, search))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut tags = BTreeMap::new();
        for stanza in Conf::read(&default.join("tags.conf"))?.stanzas {
            let eventtype = stanza.name.strip_prefix("eventtype=").ok_or_else(|| {
                format!(
                    "tags.conf [{}]: only eventtype= stanzas are implemented",
                    stanza.name
                )
            })?;
            if !eventtypes.iter().any(|(n, _)| n == eventtype) {
                return Err(format!("tags.conf [{}]: no such event type", stanza.name));
            }
            let mut enabled = Vec::new();
            for (tag, state) in &stanza.settings {
                match state.as_str() {
                    "enabled" => enabled.push(tag.clone()),
                    "disabled" => {}
                    other => return Err(format!("tags.conf [{}] {tag} = {other}", stanza.name)),
                }
            }
            tags.insert(eventtype.to_owned(), enabled);
        }
        Ok(App {
            aliases,
            evals,
            eventtypes,
            tags,
        })
    }

    /// The calculated fields and aliases the app defines.
    #[cfg_attr(not(feature = "firehose"), allow(dead_code))]
    pub fn mapped_fields(&self) -> BTreeSet<String> {
        self.aliases
            .iter()
            .map(|(_, a)| a.clone())
            .chain(self.evals.iter().map(|(f, _)| f.clone()))
            .collect()
    }

    pub fn eventtype_names(&self) -> Vec<&str> {
        self.eventtypes.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Every field a search sees on `hec`, an event as the HEC event endpoint
    /// receives it, including `eventtype` and `tag`.
    #[cfg_attr(not(feature = "firehose"), allow(dead_code))]
    pub fn fields(&self, hec: &Json) -> Result<Fields, String> {
        let mut fields = Fields::new();
        let text = |key: &str| {
            hec[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("HEC event without a string {key}: {hec}"))
        };
        let sourcetype = text("sourcetype")?;
        if sourcetype != SOURCETYPE {
            return Err(format!(
                "sourcetype {sourcetype} is not the app's {SOURCETYPE}"
            ));
        }
        for key in ["host", "source", "sourcetype"] {
            fields.entry(key.to_owned()).or_default().push(text(key)?);
        }
        if let Some(index) = hec.get("index") {
            fields
                .entry("index".to_owned())
                .or_default()
                .push(index.as_str().ok_or("index is not a string")?.to_owned());
        }
        // Indexed fields (HEC `fields`), then the JSON keys of _raw. A name in
        // both holds both values, as in Splunk.
        for (key, value) in hec["fields"]
            .as_object()
            .ok_or("HEC event without fields")?
        {
            let value = value
                .as_str()
                .ok_or_else(|| format!("indexed field {key} is not a string"))?;
            fields
                .entry(key.clone())
                .or_default()
                .push(value.to_owned());
        }
        json_fields("", &hec["event"], &mut fields)?;

        // Aliases all read the fields as extracted.
        let extracted = fields.clone();
        for (source, alias) in &self.aliases {
            if extracted.contains_key(alias) {
                return Err(format!(
                    "FIELDALIAS onto {alias}, which the event already has: AS and ASNEW differ there, \
                     and that is not modelled"
                ));
            }
            if let Some(values) = extracted.get(source) {
                fields.insert(alias.clone(), values.clone());
            }
        }
        // Calculated fields all read the fields as aliased.
        let aliased = fields.clone();
        for (field, expr) in &self.evals {
            let value = expr
                .eval(&aliased)
                .map_err(|e| format!("EVAL-{field}: {e}"))?;
            match assigned(value).map_err(|e| format!("EVAL-{field}: {e}"))? {
                Some(values) => {
                    fields.insert(field.clone(), values);
                }
                None if aliased.contains_key(field) => {
                    return Err(format!(
                        "EVAL-{field} is null on an event that has {field}: whether Splunk removes \
                         the field is not modelled"
                    ));
                }
                None => {}
            }
        }
        let matched: Vec<String> = self
            .eventtypes
            .iter()
            .filter(|(_, search)| search.matches(&fields))
            .map(|(name, _)| name.clone())
            .collect();
        let tags: BTreeSet<String> = matched
            .iter()
            .flat_map(|e| self.tags.get(e).into_iter().flatten().cloned())
            .collect();
        if !matched.is_empty() {
            fields.insert("eventtype".to_owned(), matched);
        }
        if !tags.is_empty() {
            fields.insert("tag".to_owned(), tags.into_iter().collect());
        }
        Ok(fields)
    }
}

/// FIELDALIAS- and EVAL- settings of the sourcetype stanza, checked.
#[allow(clippy::type_complexity)]
fn props_settings(props: &Conf) -> Result<(Vec<(String, String)>, Vec<(String, Expr)>), String> {
    let mut aliases = Vec::new();
    let mut evals = Vec::new();
    for stanza in &props.stanzas {
        if stanza.name != SOURCETYPE {
            return Err(format!(
                "props.conf [{}]: only the [{SOURCETYPE}] stanza is modelled",
                stanza.name
            ));
        }
        for (key, value) in &stanza.settings {
            if let Some(class) = key.strip_prefix("FIELDALIAS-") {
                let words: Vec<&str> = value.split_whitespace().collect();
                if words.is_empty() || !words.len().is_multiple_of(3) {
                    return Err(format!(
                        "props.conf {key}: expected `source AS alias` pairs"
                    ));
                }
                for triple in words.chunks(3) {
                    if triple[1] != "AS" {
                        return Err(format!(
                            "props.conf FIELDALIAS-{class}: `{}` not implemented (only AS is)",
                            triple[1]
                        ));
                    }
                    aliases.push((triple[0].to_owned(), triple[2].to_owned()));
                }
            } else if let Some(field) = key.strip_prefix("EVAL-") {
                let expr = Expr::parse(value).map_err(|e| format!("props.conf {key}: {e}"))?;
                evals.push((field.to_owned(), expr));
            } else if key == "KV_MODE" {
                if value != "json" {
                    return Err(format!(
                        "props.conf KV_MODE = {value}: only json is modelled"
                    ));
                }
            } else if !NO_SEARCH_TIME_EFFECT.contains(&key.as_str()) {
                return Err(format!(
                    "props.conf {key} is not modelled by tests/integration/splunk: implement it there first"
                ));
            }
        }
        if stanza.get("KV_MODE").is_none() {
            return Err("props.conf: KV_MODE = json is what the model implements".to_owned());
        }
    }
    // Aliases run side by side, and so do calculated fields: one cannot see
    // another's result, and Splunk's order among them is not modelled.
    let alias_names: BTreeSet<&str> = aliases.iter().map(|(_, a)| a.as_str()).collect();
    if alias_names.len() != aliases.len() {
        return Err("props.conf: two FIELDALIAS settings make the same field".to_owned());
    }
    if let Some((source, _)) = aliases
        .iter()
        .find(|(s, _)| alias_names.contains(s.as_str()))
    {
        return Err(format!("props.conf: FIELDALIAS of the alias {source}"));
    }
    for (field, expr) in &evals {
        let mut read = Vec::new();
        expr.fields(&mut read);
        if let Some(other) = read
            .iter()
            .find(|r| *r != field && evals.iter().any(|(f, _)| f == *r))
        {
            return Err(format!(
                "props.conf EVAL-{field} reads {other}, another EVAL's result: Splunk does not chain calculated fields"
            ));
        }
    }
    Ok((aliases, evals))
}

/// KV_MODE = json: nested keys joined with `.`, arrays as `{}`, every
/// element of an array one value of a multivalue field. Numbers keep their
/// JSON text. Splunk's rendering of JSON null is not modelled.
fn json_fields(prefix: &str, value: &Json, out: &mut Fields) -> Result<(), String> {
    match value {
        Json::Object(map) => {
            for (key, v) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                json_fields(&name, v, out)?;
            }
        }
        Json::Array(items) => {
            for item in items {
                json_fields(&format!("{prefix}{{}}"), item, out)?;
            }
        }
        Json::String(s) => out.entry(prefix.to_owned()).or_default().push(s.clone()),
        Json::Number(n) => out
            .entry(prefix.to_owned())
            .or_default()
            .push(n.to_string()),
        Json::Bool(b) => out
            .entry(prefix.to_owned())
            .or_default()
            .push(b.to_string()),
        Json::Null => return Err(format!("JSON null at {prefix} is not modelled")),
    }
    Ok(())
}

#[test]
fn json_extraction_names_fields_like_splunk() {
    let mut fields = Fields::new();
    let event = serde_json::json!({
        "name": "aws:listening-tcp-ports",
        "value": {"ports": [22, 443]},
        "edge": {"report_id": 7, "annotations": {"site": "plant-7"}},
        "list": [{"a": 1}, {"a": 2, "b": true}],
        "empty": []
    });
    json_fields("", &event, &mut fields).expect("extracts");
    let want: Fields = [
        ("name", vec!["aws:listening-tcp-ports"]),
        ("value.ports{}", vec!["22", "443"]),
        ("edge.report_id", vec!["7"]),
        ("edge.annotations.site", vec!["plant-7"]),
        ("list{}.a", vec!["1", "2"]),
        ("list{}.b", vec!["true"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(fields, want);
}

/// The loader refuses props.conf settings it does not implement.
#[test]
fn unmodelled_props_settings_are_refused() {
    let stanza = |body: &str| {
        Conf::parse(&format!("[{SOURCETYPE}]\nKV_MODE = json\n{body}\n")).expect("conf")
    };
    for body in [
        "EXTRACT-port = port=(?<port>\\d+)",
        "REPORT-kv = some_transform",
        "LOOKUP-sev = severities severity OUTPUT severity_id",
        "FIELDALIAS-x = a ASNEW b",
        "FIELDALIAS-x = a AS b b AS c",
        "EVAL-a = lower(name)\n",
        "EVAL-a = if(name==\"x\", \"y\", null())\nEVAL-b = a",
        "SEDCMD-strip = s/x//",
    ] {
        assert!(props_settings(&stanza(body)).is_err(), "{body} accepted");
    }
    let kv_auto = Conf::parse(&format!("[{SOURCETYPE}]\nKV_MODE = auto\n")).expect("conf");
    assert!(props_settings(&kv_auto).is_err());
    let other = Conf::parse("[host::edge-01]\nKV_MODE = json\n").expect("conf");
    assert!(props_settings(&other).is_err());
}
