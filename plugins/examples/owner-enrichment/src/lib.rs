//! Tags every sample with who owns the device, where it is and how critical
//! it is, so SIEM events can be routed and prioritised without a lookup.
//! Every `config` key becomes an annotation; `owner`, `site` and
//! `criticality` are the usual ones, and `criticality` is checked.

use std::collections::BTreeMap;

use defender_plugin_sdk::{Config, Plugin, Sample, Verdict};

pub struct OwnerEnrichment {
    annotations: BTreeMap<String, String>,
}

const CRITICALITIES: [&str; 4] = ["low", "medium", "high", "critical"];

impl Plugin for OwnerEnrichment {
    fn init(config: &Config) -> Result<Self, String> {
        if let Some(c) = config.get("criticality")
            && !CRITICALITIES.contains(&c)
        {
            return Err(format!(
                "config key criticality: {c:?} is not one of {}",
                CRITICALITIES.join(", ")
            ));
        }
        if config.get("owner").is_none() {
            return Err("config key owner is required".to_owned());
        }
        Ok(OwnerEnrichment {
            annotations: config
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    fn process(&mut self, sample: &mut Sample) -> Result<Verdict, String> {
        for (k, v) in &self.annotations {
            sample.annotations.insert(k.clone(), v.clone());
        }
        Ok(Verdict::Keep)
    }
}

defender_plugin_sdk::export_plugin!(OwnerEnrichment);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotates_from_config() -> Result<(), String> {
        let config = Config::from_pairs([
            ("owner", "plant-ops"),
            ("site", "lyon-2"),
            ("criticality", "high"),
        ]);
        let mut plugin = OwnerEnrichment::init(&config)?;
        let mut sample = Sample::default();
        assert_eq!(plugin.process(&mut sample)?, Verdict::Keep);
        assert_eq!(
            sample.annotations.get("owner").map(String::as_str),
            Some("plant-ops")
        );
        assert_eq!(
            sample.annotations.get("site").map(String::as_str),
            Some("lyon-2")
        );
        assert_eq!(sample.annotations.len(), 3);
        Ok(())
    }

    #[test]
    fn rejects_unknown_criticality_and_missing_owner() {
        let bad = Config::from_pairs([("owner", "x"), ("criticality", "urgent")]);
        assert_eq!(
            OwnerEnrichment::init(&bad).err().as_deref(),
            Some("config key criticality: \"urgent\" is not one of low, medium, high, critical")
        );
        assert_eq!(
            OwnerEnrichment::init(&Config::default()).err().as_deref(),
            Some("config key owner is required")
        );
    }
}
