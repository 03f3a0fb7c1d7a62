//! The roadwork question put to a vision-language model, and how its answer becomes a
//! probability. The miner's cascade (stage 2, at serve time) and the training side's teacher
//! (`sv-train teach`, over store rows) ask the same question and read the answer the same way.

use anyhow::{Result, bail};

/// The YES/NO question.
pub const VLM_PROMPT: &str = "Is there ACTIVE road construction or road work in this street image \
(cones, barriers, construction signs, excavators, workers)? Answer YES or NO.";

/// The probability in the answer text alone: `YES…` → 1, `NO…` → 0, anything else an error.
pub fn parse_yes_no(answer: &str) -> Result<f32> {
    let a = answer.trim().trim_matches(|c: char| !c.is_alphanumeric()).to_ascii_uppercase();
    if a.starts_with("YES") {
        Ok(1.0)
    } else if a.starts_with("NO") {
        Ok(0.0)
    } else {
        bail!("the VLM answered neither YES nor NO: {:?}", answer.chars().take(80).collect::<String>())
    }
}

/// Which answer a token spells: `Some(true)` for YES (any case, with the tokenizer's leading
/// space or `Ġ`/`▁` marker, trailing punctuation), `Some(false)` for NO, `None` otherwise.
pub fn token_answer(token: &str) -> Option<bool> {
    let t = token.trim_start_matches(['Ġ', '▁']).trim().trim_matches(|c: char| !c.is_alphanumeric());
    match t.to_ascii_uppercase().as_str() {
        "YES" => Some(true),
        "NO" => Some(false),
        _ => None,
    }
}

/// P(YES) from the log-probabilities of the candidates for the answer's first token (the
/// server's `top_logprobs`): the mass of the YES spellings over the mass of YES and NO ones.
/// `None` when no candidate spells either (a finite log-probability is required; servers write
/// −∞ as a large negative number, which counts as no mass).
pub fn yes_probability(candidates: &[(String, f64)]) -> Option<f32> {
    let (mut yes, mut no) = (0f64, 0f64);
    for (tok, lp) in candidates {
        if !lp.is_finite() {
            continue;
        }
        match token_answer(tok) {
            Some(true) => yes += lp.exp(),
            Some(false) => no += lp.exp(),
            None => {}
        }
    }
    (yes + no > 0.0).then(|| (yes / (yes + no)) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_tokens_and_probabilities() {
        assert_eq!(parse_yes_no(" Yes.").unwrap(), 1.0);
        assert_eq!(parse_yes_no("NO").unwrap(), 0.0);
        assert!(parse_yes_no("maybe").is_err());
        assert_eq!(token_answer("ĠYes"), Some(true));
        assert_eq!(token_answer(" NO."), Some(false));
        assert_eq!(token_answer("None"), None);
        let c = |v: &[(&str, f64)]| v.iter().map(|(t, l)| (t.to_string(), *l)).collect::<Vec<_>>();
        // YES and Yes add up: (0.6 + 0.2) / (0.6 + 0.2 + 0.1).
        let p = yes_probability(&c(&[("YES", 0.6f64.ln()), ("Yes", 0.2f64.ln()), ("NO", 0.1f64.ln()), ("The", -1.0)]))
            .unwrap();
        assert!((p - 0.8 / 0.9).abs() < 1e-6, "{p}");
        // vLLM's −9999 (its −∞) is no mass: alone it says nothing, beside a real NO it is zero.
        assert_eq!(yes_probability(&c(&[("NO", -9999.0)])), None);
        assert_eq!(yes_probability(&c(&[("YES", -9999.0), ("NO", -0.01)])), Some(0.0));
        assert_eq!(yes_probability(&c(&[("The", -0.1)])), None);
        assert_eq!(yes_probability(&c(&[("YES", f64::NEG_INFINITY)])), None);
    }
}
