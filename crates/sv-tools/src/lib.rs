//! sv-tools holds the programs that test a miner from the outside, as a validator or an
//! attacker would: `sv-replay` (a local validator: challenges made exactly as the validator
//! makes them, sent signed over the axon protocol, scored with its reward; [`replay`]) and
//! `sv-load` (load at fixed rates and a corpus of bad and hostile input, [`load`]; connection
//! attacks with probes, [`attack`]). They link the
//! data store and the simulator, which the miner itself never does; the end-to-end test of the
//! miner (`tests/miner.rs`) lives here for the same reason.

pub mod attack;
pub mod load;
pub mod replay;
