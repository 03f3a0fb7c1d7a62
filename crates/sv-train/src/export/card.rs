//! The submission's Hugging Face `README.md` (the model card's readable face); the card itself
//! and the freshness rule are the bundle format's ([`sv_model::bundle::card`]).

pub use sv_model::bundle::card::*;

/// Numbers the README reports.
pub struct CardFacts<'a> {
    pub card: &'a ModelCard,
    pub backbone_id: &'a str,
    pub backbone_random: bool,
    pub precision: &'a str,
    pub metrics_table: String,
    pub reward_before: f64,
    pub reward_after: f64,
    pub threshold: f32,
}

/// A Hugging Face model card.
pub fn readme(f: &CardFacts<'_>) -> String {
    format!(
        "---\nlicense: apache-2.0\ntags:\n- bittensor\n- subnet-72\n- natix\n- streetvision\n- roadwork\n- image-classification\n---\n\n\
         # {name}\n\n{desc}\n\n\
         | field | value |\n|---|---|\n| version | {version} |\n| submitted by (hotkey) | `{hotkey}` |\n| submission time (Unix) | {time} |\n\
         | backbone | `{backbone}`{random} |\n| precision | {precision} |\n| decision threshold (raw probability mapped to 0.5) | {thr:.4} |\n\n\
         ## Validation metrics\n\n{table}\n\
         Expected subnet reward under the validator simulator (levels 0-3, JPEG q75, windows of 100): \
         {before:.4} with the plain 0.5 threshold, {after:.4} after recalibration.\n\n\
         ## Use\n\nServe with `sv-miner --bundle <this folder>`; the bundle's `manifest.json` lists the SHA-256 of every file \
         and is checked on load (`sv-train card <folder>` also prints the submission's age).\n",
        name = f.card.model_name,
        desc = f.card.description,
        version = f.card.version,
        hotkey = f.card.submitted_by,
        time = f.card.submission_time,
        backbone = f.backbone_id,
        random = if f.backbone_random { " (RANDOM weights: a pipeline demo, not a real model)" } else { "" },
        precision = f.precision,
        thr = f.threshold,
        table = f.metrics_table,
        before = f.reward_before,
        after = f.reward_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_plan() {
        let day = 86_400;
        let f = freshness(0, 10 * day).unwrap();
        assert_eq!((f.reward_factor, f.days_left.round() as i64), (1.0, 80));
        assert!(freshness(0, 60 * day).unwrap().advice.contains("refresh window"));
        let f = freshness(0, 82 * day + day / 2).unwrap();
        assert!((f.reward_factor - 0.5).abs() < 1e-9);
        assert_eq!(freshness(0, 95 * day).unwrap().reward_factor, 0.0);
        assert!(freshness(10 * day, 0).is_err());
    }
}
