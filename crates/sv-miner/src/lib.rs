//! sv-miner will be the thin miner binary of the StreetVision workspace: the subnet's
//! `ImageSynapse` axon protocol and a plain JSON API over sv-infer, input validation (base64,
//! JPEG/PNG/WebP, at most 4096×4096), `/health`, Prometheus `/metrics`, and prediction logging
//! into sv-data's store. Nothing is implemented yet.
