//! sv-infer will own serving-side inference for StreetVision miners: it loads an export bundle
//! written by sv-train (backbone weights, head, INT8 scales, thresholds, preprocessing config,
//! model card, GPU kernel caches) and runs the cascade — stage 1 backbone + head with early exit
//! outside [0.15, 0.85], optional vision-language and caption/OCR stages, a content-hash cache
//! and dynamic batching — within a latency budget well under the validator's 9 s timeout. It
//! preprocesses with sv-data's shared function. Nothing is implemented yet.
