//! Counts by label, source, split, weather and time of day.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;

use crate::Store;

/// Counts of a store's rows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub version: u64,
    pub total: usize,
    /// Counts by label; `unknown` counts the unlabelled rows.
    pub by_label: BTreeMap<String, usize>,
    /// Counts by who gave the label (`unrecorded` for rows stored before provenance was kept).
    pub by_label_source: BTreeMap<String, usize>,
    pub by_source: BTreeMap<String, usize>,
    pub by_split: BTreeMap<String, usize>,
    pub by_split_label: BTreeMap<String, usize>,
    pub by_weather: BTreeMap<String, usize>,
    pub by_time_of_day: BTreeMap<String, usize>,
    pub columns: Vec<String>,
}

/// Count rows of the store (optionally those matching a filter).
pub fn stats(store: &Store, filter: Option<&str>) -> Result<Stats> {
    let mut s = Stats { version: store.version(), columns: store.columns(), ..Default::default() };
    for m in store.metas(filter)? {
        s.total += 1;
        let label = m.label.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into());
        let from = match (m.label, m.label_source) {
            (None, _) => "none".to_string(),
            (Some(_), Some(src)) => src.to_string(),
            (Some(_), None) => "unrecorded".to_string(),
        };
        *s.by_label_source.entry(from).or_default() += 1;
        *s.by_source.entry(m.source.to_string()).or_default() += 1;
        *s.by_split.entry(m.split.to_string()).or_default() += 1;
        *s.by_split_label.entry(format!("{}/{}", m.split, label)).or_default() += 1;
        *s.by_label.entry(label).or_default() += 1;
        *s.by_weather.entry(m.meta.weather.unwrap_or_else(|| "unknown".into())).or_default() += 1;
        *s.by_time_of_day.entry(m.meta.time_of_day.unwrap_or_else(|| "unknown".into())).or_default() += 1;
    }
    Ok(s)
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "version {}: {} samples", self.version, self.total)?;
        for (name, map) in [
            ("label", &self.by_label),
            ("label from", &self.by_label_source),
            ("source", &self.by_source),
            ("split", &self.by_split),
            ("split/label", &self.by_split_label),
            ("weather", &self.by_weather),
            ("time_of_day", &self.by_time_of_day),
        ] {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "{name:>12}: {}", parts.join("  "))?;
        }
        write!(f, "{:>12}: {}", "columns", self.columns.join(", "))
    }
}
