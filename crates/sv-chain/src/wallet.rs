//! A bittensor wallet's hotkey, read from the file the Python wallet (`bittensor_wallet` 4.x)
//! writes at `<path>/<wallet>/hotkeys/<hotkey>`, named as bittensor's tools name it:
//! `--wallet-name NAME --wallet-hotkey HOTKEY [--wallet-path DIR]` (default `~/.bittensor/wallets`).
//!
//! An unencrypted hotkey file is JSON with `secretSeed` (the 32-byte mini secret),
//! `privateKey` (schnorrkel's 64-byte canonical secret key), `publicKey` and `ss58Address`; the
//! keypair is the mini secret expanded as substrate expands it (`ExpansionMode::Ed25519`), or the
//! private key, and must give the file's public key. Encrypted files (`$NACL`, `$ANSIBLE_VAULT`,
//! the legacy Fernet `gAAAAA`) are refused with how to make one this tool can read. The secret
//! never leaves this module: [`Hotkey`]'s `Debug` shows the address only.
//!
//! Signing a text message is `btcli wallet sign --use-hotkey`'s: sr25519 over the raw UTF-8
//! bytes in the `substrate` signing context, printed as 128 hex digits without `0x`.

use std::path::{Path, PathBuf};

use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey, SecretKey};

/// Why a hotkey could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("cannot read the hotkey file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "the hotkey file {path} is encrypted ({format}); sv-miner reads unencrypted hotkeys (bittensor's default \
         for hotkeys): regenerate it without a password, e.g. `btcli wallet regen-hotkey --no-use-password`"
    )]
    Encrypted { path: PathBuf, format: &'static str },
    #[error("the hotkey file {path} is not a bittensor keyfile: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("the hotkey file {path} holds {found}, not the expected hotkey {expected}")]
    Mismatch { path: PathBuf, found: String, expected: String },
}

/// A wallet's name, hotkey name and folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct WalletArgs {
    /// The wallet's name (bittensor's `--wallet.name`).
    #[arg(long = "wallet-name", id = "wallet_name")]
    pub name: String,
    /// The hotkey's name (bittensor's `--wallet.hotkey`).
    #[arg(long = "wallet-hotkey", id = "wallet_hotkey", default_value = "default")]
    pub hotkey: String,
    /// Folder of wallets (default ~/.bittensor/wallets).
    #[arg(long = "wallet-path", id = "wallet_path")]
    pub path: Option<PathBuf>,
}

impl WalletArgs {
    /// `<path>/<name>/hotkeys/<hotkey>`.
    pub fn hotkey_file(&self) -> Result<PathBuf, WalletError> {
        let root = match &self.path {
            Some(p) => p.clone(),
            None => {
                let home = std::env::var_os("HOME").ok_or_else(|| WalletError::Read {
                    path: PathBuf::from("~/.bittensor/wallets"),
                    reason: "HOME is not set: pass --wallet-path".into(),
                })?;
                PathBuf::from(home).join(".bittensor/wallets")
            }
        };
        Ok(root.join(&self.name).join("hotkeys").join(&self.hotkey))
    }

    /// Read the hotkey.
    pub fn load(&self) -> Result<Hotkey, WalletError> {
        Hotkey::from_file(&self.hotkey_file()?)
    }

    /// Read the hotkey and, when `expected` (SS58) is given, check that it is that one.
    pub fn load_expecting(&self, expected: Option<&str>) -> Result<Hotkey, WalletError> {
        let file = self.hotkey_file()?;
        let hk = Hotkey::from_file(&file)?;
        if let Some(want) = expected {
            hk.expect(want, &file)?;
        }
        Ok(hk)
    }
}

/// A hotkey's keypair.
pub struct Hotkey {
    keypair: Keypair,
    ss58: String,
}

impl std::fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hotkey").field("ss58", &self.ss58).finish_non_exhaustive()
    }
}

fn hex32<const N: usize>(v: &serde_json::Value) -> Option<[u8; N]> {
    let b = hex::decode(v.as_str()?.trim_start_matches("0x")).ok()?;
    b.try_into().ok()
}

impl Hotkey {
    /// Read a bittensor hotkey file.
    pub fn from_file(path: &Path) -> Result<Self, WalletError> {
        let text = std::fs::read(path).map_err(|e| WalletError::Read { path: path.into(), reason: e.to_string() })?;
        for (prefix, format) in
            [(&b"$NACL"[..], "NaCl"), (b"$ANSIBLE_VAULT", "Ansible Vault"), (b"gAAAAA", "legacy Fernet")]
        {
            if text.starts_with(prefix) {
                return Err(WalletError::Encrypted { path: path.into(), format });
            }
        }
        let bad = |reason: &str| WalletError::Format { path: path.into(), reason: reason.into() };
        let json: serde_json::Value = serde_json::from_slice(&text).map_err(|_| bad("not JSON"))?;
        let keypair = if let Some(seed) = json.get("secretSeed").and_then(hex32::<32>) {
            MiniSecretKey::from_bytes(&seed)
                .map_err(|_| bad("secretSeed is not a mini secret key"))?
                .expand_to_keypair(ExpansionMode::Ed25519)
        } else if let Some(private) = json.get("privateKey").and_then(hex32::<64>) {
            SecretKey::from_bytes(&private)
                .map_err(|_| bad("privateKey is not a 64-byte sr25519 secret key"))?
                .to_keypair()
        } else {
            return Err(bad("no secretSeed or privateKey (a public-key-only file cannot sign)"));
        };
        let ss58 = sv_core::ss58::encode(&keypair.public.to_bytes());
        if let Some(public) = json.get("publicKey").and_then(hex32::<32>)
            && public != keypair.public.to_bytes()
        {
            return Err(bad("its publicKey is not the public key of its secret"));
        }
        if let Some(addr) = json.get("ss58Address").and_then(|v| v.as_str())
            && addr != ss58
        {
            return Err(WalletError::Mismatch { path: path.into(), found: ss58, expected: addr.into() });
        }
        Ok(Self { keypair, ss58 })
    }

    pub fn ss58(&self) -> &str {
        &self.ss58
    }

    pub fn public(&self) -> [u8; 32] {
        self.keypair.public.to_bytes()
    }

    /// Check that this is the hotkey `expected` (SS58), as `--hotkey` names it.
    pub fn expect(&self, expected: &str, path: &Path) -> Result<(), WalletError> {
        if self.ss58 == expected {
            Ok(())
        } else {
            Err(WalletError::Mismatch { path: path.into(), found: self.ss58.clone(), expected: expected.into() })
        }
    }

    /// Sign raw bytes (sr25519, `substrate` context); 64 bytes.
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        self.keypair.sign(schnorrkel::signing_context(b"substrate").bytes(msg)).to_bytes()
    }

    /// `btcli wallet sign --use-hotkey --message <msg>`'s `signed_message`: hex, no `0x`.
    pub fn sign_message(&self, msg: &str) -> String {
        hex::encode(self.sign_bytes(msg.as_bytes()))
    }
}

/// Verify a signature made by [`Hotkey::sign_message`] (or btcli) for `ss58`.
pub fn verify_message(ss58: &str, msg: &str, signature_hex: &str) -> bool {
    let Ok(pk) = sv_core::ss58::decode(ss58) else { return false };
    let Ok(pk) = schnorrkel::PublicKey::from_bytes(&pk) else { return false };
    let Ok(sig) = hex::decode(signature_hex.trim_start_matches("0x")) else { return false };
    let Ok(sig) = schnorrkel::Signature::from_bytes(&sig) else { return false };
    pk.verify_simple(b"substrate", msg.as_bytes(), &sig).is_ok()
}
