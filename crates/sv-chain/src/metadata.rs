//! What a signed extrinsic needs from the runtime's metadata (V15, from the runtime API
//! `Metadata_metadata_at_version(15)`), read without a metadata library: the pallet and call
//! index of a call, and the transaction extensions in order, each with whether what it puts
//! into the extrinsic (`ty`) and into the signed payload (`additional_signed`) is zero-sized.
//! The type registry, pallets and extrinsic sections are decoded as `frame-metadata`'s
//! `RuntimeMetadataV15` lays them out; everything else is skipped. Reading the extensions from the
//! chain, not from a list written here, is what keeps a signed call valid across runtime upgrades
//! (subtensor added extensions between spec 343 and 425).

use std::collections::HashMap;

use parity_scale_codec::{Compact, Decode, Input};

type R<T> = Result<T, String>;

fn err(what: &str) -> impl Fn(parity_scale_codec::Error) -> String + '_ {
    move |e| format!("metadata {what}: {e}")
}

fn compact<I: Input>(i: &mut I, what: &str) -> R<u32> {
    Ok(<Compact<u32>>::decode(i).map_err(err(what))?.0)
}

fn string<I: Input>(i: &mut I, what: &str) -> R<String> {
    String::decode(i).map_err(err(what))
}

fn strings<I: Input>(i: &mut I, what: &str) -> R<()> {
    for _ in 0..compact(i, what)? {
        string(i, what)?;
    }
    Ok(())
}

fn byte<I: Input>(i: &mut I, what: &str) -> R<u8> {
    u8::decode(i).map_err(err(what))
}

fn option<I: Input, T>(i: &mut I, what: &str, f: impl FnOnce(&mut I) -> R<T>) -> R<Option<T>> {
    match byte(i, what)? {
        0 => Ok(None),
        1 => f(i).map(Some),
        t => Err(format!("metadata {what}: option tag {t}")),
    }
}

/// A type of the registry, as far as this module needs it.
#[derive(Debug, Clone)]
enum Def {
    Composite(Vec<u32>),
    Variant(Vec<(String, u8, usize)>),
    Tuple(Vec<u32>),
    Array(u32, u32),
    Other,
}

fn fields<I: Input>(i: &mut I) -> R<Vec<u32>> {
    let n = compact(i, "fields")?;
    let mut out = Vec::new();
    for _ in 0..n {
        option(i, "field name", |i| string(i, "field name"))?;
        out.push(compact(i, "field type")?);
        option(i, "field type name", |i| string(i, "field type name"))?;
        strings(i, "field docs")?;
    }
    Ok(out)
}

fn type_def<I: Input>(i: &mut I) -> R<Def> {
    Ok(match byte(i, "type def")? {
        0 => Def::Composite(fields(i)?),
        1 => {
            let n = compact(i, "variants")?;
            let mut vs = Vec::new();
            for _ in 0..n {
                let name = string(i, "variant name")?;
                let f = fields(i)?;
                let index = byte(i, "variant index")?;
                strings(i, "variant docs")?;
                vs.push((name, index, f.len()));
            }
            Def::Variant(vs)
        }
        2 => {
            compact(i, "sequence")?;
            Def::Other
        }
        3 => {
            let len = u32::decode(i).map_err(err("array length"))?;
            Def::Array(len, compact(i, "array type")?)
        }
        4 => {
            let n = compact(i, "tuple")?;
            Def::Tuple((0..n).map(|_| compact(i, "tuple type")).collect::<R<_>>()?)
        }
        5 => {
            byte(i, "primitive")?;
            Def::Other
        }
        6 => {
            compact(i, "compact")?;
            Def::Other
        }
        7 => {
            compact(i, "bit store")?;
            compact(i, "bit order")?;
            Def::Other
        }
        t => return Err(format!("metadata: type def tag {t}")),
    })
}

/// One transaction extension of the runtime, in the order the extrinsic carries them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Extension {
    pub identifier: String,
    /// Whether it puts nothing into the extrinsic, and nothing into the signed payload.
    pub ty_empty: bool,
    pub additional_empty: bool,
}

/// What [`read`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Runtime {
    pub extrinsic_version: u8,
    pub extensions: Vec<Extension>,
    /// `(pallet name, call name)` → `(pallet index, call index, argument count)`.
    #[serde(skip)]
    calls: HashMap<(String, String), (u8, u8, usize)>,
}

impl Runtime {
    /// `(pallet index, call index, argument count)` of `pallet.call`.
    pub fn call(&self, pallet: &str, call: &str) -> Option<(u8, u8, usize)> {
        self.calls.get(&(pallet.to_string(), call.to_string())).copied()
    }
}

/// Read the answer of `Metadata_metadata_at_version(15)`: `Option<OpaqueMetadata>` (`01`,
/// a compact length, then `meta`, version 15 and the metadata).
pub fn read(option_bytes: &[u8]) -> R<Runtime> {
    let mut i = option_bytes;
    let opaque = option(&mut i, "option", |i| Vec::<u8>::decode(i).map_err(err("bytes")))?
        .ok_or("the runtime has no metadata V15")?;
    let mut i = opaque.as_slice();
    let mut magic = [0u8; 4];
    i.read(&mut magic).map_err(err("magic"))?;
    if &magic != b"meta" {
        return Err("metadata: no `meta` magic".into());
    }
    let version = byte(&mut i, "version")?;
    if version != 15 {
        return Err(format!("metadata version {version}, not 15"));
    }
    // The type registry.
    let n = compact(&mut i, "types")?;
    let mut types: HashMap<u32, Def> = HashMap::with_capacity((n as usize).min(4096));
    for _ in 0..n {
        let id = compact(&mut i, "type id")?;
        strings(&mut i, "type path")?;
        for _ in 0..compact(&mut i, "type params")? {
            string(&mut i, "type param name")?;
            option(&mut i, "type param type", |i| compact(i, "type param type"))?;
        }
        let def = type_def(&mut i)?;
        strings(&mut i, "type docs")?;
        types.insert(id, def);
    }
    // Pallets.
    let mut calls = HashMap::new();
    for _ in 0..compact(&mut i, "pallets")? {
        let name = string(&mut i, "pallet name")?;
        option(&mut i, "storage", |i| {
            string(i, "storage prefix")?;
            for _ in 0..compact(i, "storage entries")? {
                string(i, "storage name")?;
                byte(i, "storage modifier")?;
                match byte(i, "storage type")? {
                    0 => {
                        compact(i, "plain type")?;
                    }
                    1 => {
                        for _ in 0..compact(i, "hashers")? {
                            byte(i, "hasher")?;
                        }
                        compact(i, "map key")?;
                        compact(i, "map value")?;
                    }
                    t => return Err(format!("metadata: storage type tag {t}")),
                }
                Vec::<u8>::decode(i).map_err(err("storage default"))?;
                strings(i, "storage docs")?;
            }
            Ok(())
        })?;
        let call_ty = option(&mut i, "calls", |i| compact(i, "calls"))?;
        option(&mut i, "event", |i| compact(i, "event"))?;
        for _ in 0..compact(&mut i, "constants")? {
            string(&mut i, "constant name")?;
            compact(&mut i, "constant type")?;
            Vec::<u8>::decode(&mut i).map_err(err("constant value"))?;
            strings(&mut i, "constant docs")?;
        }
        option(&mut i, "error", |i| compact(i, "error"))?;
        let index = byte(&mut i, "pallet index")?;
        strings(&mut i, "pallet docs")?;
        if let Some(Def::Variant(vs)) = call_ty.and_then(|t| types.get(&t)) {
            for (call, call_index, args) in vs {
                calls.insert((name.clone(), call.clone()), (index, *call_index, *args));
            }
        }
    }
    // The extrinsic.
    let extrinsic_version = byte(&mut i, "extrinsic version")?;
    for what in ["address type", "call type", "signature type", "extra type"] {
        compact(&mut i, what)?;
    }
    let empty = |t: u32| is_empty(&types, t, 0);
    let mut extensions = Vec::new();
    for _ in 0..compact(&mut i, "extensions")? {
        let identifier = string(&mut i, "extension identifier")?;
        let ty = compact(&mut i, "extension type")?;
        let add = compact(&mut i, "extension additional type")?;
        extensions.push(Extension { identifier, ty_empty: empty(ty), additional_empty: empty(add) });
    }
    Ok(Runtime { extrinsic_version, extensions, calls })
}

/// Whether type `t` encodes to no bytes (an empty composite or tuple, or one of such).
fn is_empty(types: &HashMap<u32, Def>, t: u32, depth: usize) -> bool {
    if depth > 32 {
        return false;
    }
    match types.get(&t) {
        Some(Def::Composite(f)) | Some(Def::Tuple(f)) => f.iter().all(|x| is_empty(types, *x, depth + 1)),
        Some(Def::Array(len, x)) => *len == 0 || is_empty(types, *x, depth + 1),
        _ => false,
    }
}
