//! SS58 addresses (Substrate / Bittensor hotkeys): base58 of `prefix ‖ public key ‖ checksum`,
//! the checksum being the first two bytes of `blake2b-512("SS58PRE" ‖ prefix ‖ public key)`.
//! Bittensor uses prefix 42. Export records the miner's hotkey; the miner checks validators'.

use anyhow::{Result, bail};
use blake2::{Blake2b512, Digest};

/// Bittensor's SS58 prefix.
pub const BITTENSOR_PREFIX: u8 = 42;

fn checksum(body: &[u8]) -> [u8; 2] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(body);
    let d = h.finalize();
    [d[0], d[1]]
}

/// The 32-byte public key of an SS58 address with prefix 42; the error says what is wrong.
pub fn decode(address: &str) -> Result<[u8; 32]> {
    let bytes = match bs58::decode(address).into_vec() {
        Ok(b) => b,
        Err(e) => bail!("{address:?} is not an SS58 address: {e}"),
    };
    if bytes.len() != 35 {
        bail!("{address:?} is not an SS58 address of a 32-byte key ({} bytes decoded, 35 expected)", bytes.len());
    }
    if bytes[0] != BITTENSOR_PREFIX {
        bail!("{address:?} has SS58 prefix {}, Bittensor uses {BITTENSOR_PREFIX}", bytes[0]);
    }
    if checksum(&bytes[..33]) != bytes[33..35] {
        bail!("{address:?} has a wrong SS58 checksum (a typo?)");
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[1..33]);
    Ok(key)
}

/// The SS58 address (prefix 42) of a public key.
pub fn encode(key: &[u8; 32]) -> String {
    let mut body = vec![BITTENSOR_PREFIX];
    body.extend_from_slice(key);
    let c = checksum(&body);
    body.extend_from_slice(&c);
    bs58::encode(body).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_round_trips_and_typos_are_refused() {
        // //Alice's sr25519 public key and its well-known SS58 address.
        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let key = decode(alice).unwrap();
        assert_eq!(hex::encode(key), "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d");
        assert_eq!(encode(&key), alice);
        let typo = alice.replace('G', "H");
        assert!(format!("{:#}", decode(&typo).unwrap_err()).contains("SS58"));
        assert!(decode("not-base58-0OIl").is_err());
    }
}
