#!/usr/bin/env python3
"""End-to-end check of an ImageSynapse miner with the real bittensor 10.2.0 dendrite, offline on loopback.

    python3 crates/sv-miner/tests/dendrite_test.py --port P --miner-hotkey <ss58> --image x.jpg [--count N]

Needs `pip install 'bittensor==10.2.0' 'async-substrate-interface<2'`. The miner must allow //Alice
(5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY) and refuse //Bob. Checks:
  query i/N      dendrite (//Alice) -> dendrite.status_code == 200 and 0 <= prediction <= 1
  bad signature  Alice's headers, signature made by //Bob's key        -> HTTP 401
  replay         identical headers+body sent twice                     -> 200, then 401
  stale nonce    nonce 60 s old on a fresh uuid                        -> HTTP 401
  blacklist      dendrite (//Bob)                                      -> dendrite.status_code == 403
  malformed body valid signed headers, broken JSON                     -> HTTP 400 or 422 (bt.Axon: 422)
Query times are client wall time and include bittensor's own slow header building
(tens of ms per call). Error answers must be JSON objects with a "message" (what the dendrite reads on non-200).
See crates/sv-miner/PROTOCOL.md.
"""
import argparse
import asyncio
import base64
import json
import sys
import time

# Offline recipe: bittensor calls `networking.get_external_ip()` (a module attribute lookup) from
# Dendrite.__init__ (core/dendrite.py:114) and Axon.__init__ (core/axon.py:360); it would otherwise
# query checkip.amazonaws.com. Patch the module attribute before anything builds a Dendrite.
try:
    import bittensor.utils.networking as _net
except ImportError:
    sys.exit("bittensor not importable: pip install 'bittensor==10.2.0' 'async-substrate-interface<2'")

_net.get_external_ip = lambda: "127.0.0.1"

import aiohttp  # noqa: E402
import bittensor as bt  # noqa: E402
import pydantic  # noqa: E402
from bittensor_wallet import Keypair  # noqa: E402


# Copied from natixnetwork/streetvision-subnet, natix/protocol.py lines 71-104 (class ImageSynapse).
class ImageSynapse(bt.Synapse):
    """
    This protocol helps in handling image/prediction request and response communication between
    the miner and the validator.

    Attributes:
    - image: a bas64 encoded images
    - prediction: a float  indicating the probabilty that the image is AI generated/modified.
        >.5 is considered generated/modified, <= 0.5 is considered real.
    """

    testnet_label: int = -1  # for easier miner eval on testnet

    # Required request input, filled by sending dendrite caller.
    image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)

    # Optional request output, filled by receiving axon.
    prediction: float = pydantic.Field(
        title="Prediction",
        description="Probability that the image is AI generated/modified",
        default=-1.0,
        frozen=False,
    )

    def deserialize(self) -> float:
        return self.prediction


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def report(self, name: str, ok: bool, detail: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def signed_request(dendrite: bt.Dendrite, axon: bt.AxonInfo, image_b64: str, timeout: float):
    """Headers and body exactly as Dendrite.call() builds them (core/dendrite.py:571-582)."""
    syn = dendrite.preprocess_synapse_for_request(axon, ImageSynapse(image=image_b64), timeout)
    headers = syn.to_headers()  # evaluated before model_dump(), as in call(): fills total_size
    return syn, headers, json.dumps(syn.model_dump())  # aiohttp's json= uses json.dumps


async def raw_post(session: aiohttp.ClientSession, url: str, headers: dict, body: str, timeout: float):
    """POST and return (status, parsed-json-or-None, raw text)."""
    h = dict(headers)
    h["Content-Type"] = "application/json"
    try:
        async with session.post(url, headers=h, data=body.encode(),
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            status, text = r.status, await r.text()
    except Exception as e:  # connection refused, timeout, ...: reported as a failed check
        return -1, None, f"{type(e).__name__}: {e}"
    try:
        js = json.loads(text)
    except ValueError:
        js = None
    return status, js, text


def error_detail(status: int, js, text: str) -> str:
    msg = js.get("message") if isinstance(js, dict) else None
    if msg is not None:
        return f"HTTP {status}, message={str(msg)[:100]!r}"
    return f"HTTP {status}, body={text[:100]!r}"


def has_message(js) -> bool:
    return isinstance(js, dict) and isinstance(js.get("message"), str)


async def run(args) -> Checks:
    c = Checks()
    alice, bob = Keypair.create_from_uri("//Alice"), Keypair.create_from_uri("//Bob")
    image_b64 = base64.b64encode(open(args.image, "rb").read()).decode()
    axon = bt.AxonInfo(version=0, ip=args.host, port=args.port, ip_type=4, hotkey=args.miner_hotkey,
                       coldkey=bob.ss58_address, protocol=4, placeholder1=0, placeholder2=0)
    url = f"http://{args.host}:{args.port}/ImageSynapse"
    t = args.timeout

    # 1. Real dendrite queries (as the NATIX validator: deserialize=False, timeout=9).
    d_alice = bt.Dendrite(wallet=alice)  # a Keypair is accepted (dendrite.py:100-119)
    for i in range(args.count):
        t0 = time.perf_counter()
        r = await d_alice.forward(axon, ImageSynapse(image=image_b64), timeout=t, deserialize=False)
        ms = (time.perf_counter() - t0) * 1000
        p = r.prediction
        ok = r.dendrite.status_code == 200 and isinstance(p, float) and 0.0 <= p <= 1.0
        c.report(f"query {i + 1}/{args.count}", ok,
                 f"status={r.dendrite.status_code} msg={str(r.dendrite.status_message)[:80]!r} "
                 f"prediction={p} {ms:.1f} ms")
    await d_alice.aclose_session()

    # Raw requests built by the dendrite's own code, then tampered with.
    d_raw = bt.Dendrite(wallet=alice)
    async with aiohttp.ClientSession() as s:
        # 2. Bad signature: Bob's key signs Alice's exact message; headers otherwise untouched.
        syn, h, body = signed_request(d_raw, axon, image_b64, t)
        msg = f"{syn.dendrite.nonce}.{syn.dendrite.hotkey}.{syn.axon.hotkey}.{syn.dendrite.uuid}.{syn.body_hash}"
        h["bt_header_dendrite_signature"] = "0x" + bob.sign(msg).hex()
        st, js, text = await raw_post(s, url, h, body, t)
        c.report("bad signature -> 401", st == 401 and has_message(js), error_detail(st, js, text))

        # 3. Replay: identical headers + body twice; the nonce is not greater the second time.
        _, h, body = signed_request(d_raw, axon, image_b64, t)
        st1, js1, text1 = await raw_post(s, url, h, body, t)
        st2, js2, text2 = await raw_post(s, url, h, body, t)
        p1 = js1.get("prediction") if isinstance(js1, dict) else None
        c.report("replay: first -> 200", st1 == 200, f"HTTP {st1}, prediction={p1}")
        c.report("replay: second -> 401", st2 == 401 and has_message(js2), error_detail(st2, js2, text2))

        # 4. Stale nonce: 60 s old, fresh dendrite uuid (no stored nonce) -> outside 4 s + timeout window.
        d_old = bt.Dendrite(wallet=alice)
        syn = d_old.preprocess_synapse_for_request(axon, ImageSynapse(image=image_b64), t)
        syn.dendrite.nonce = time.time_ns() - 60 * 10**9
        msg = f"{syn.dendrite.nonce}.{syn.dendrite.hotkey}.{syn.axon.hotkey}.{syn.dendrite.uuid}.{syn.body_hash}"
        syn.dendrite.signature = "0x" + alice.sign(msg).hex()
        st, js, text = await raw_post(s, url, syn.to_headers(), json.dumps(syn.model_dump()), t)
        c.report("stale nonce -> 401", st == 401 and has_message(js), error_detail(st, js, text))

        # 5. Malformed JSON body with valid, freshly signed headers.
        _, h, _ = signed_request(d_raw, axon, image_b64, t)
        st, js, text = await raw_post(s, url, h, '{"image": "abc", ', t)
        c.report("malformed JSON body -> 400/422", st in (400, 422), f"HTTP {st}, body={text[:100]!r}")

    # 6. Not-allowed hotkey through the real dendrite.
    d_bob = bt.Dendrite(wallet=bob)
    r = await d_bob.forward(axon, ImageSynapse(image=image_b64), timeout=t, deserialize=False)
    c.report("blacklisted hotkey (//Bob) -> 403", r.dendrite.status_code == 403,
             f"status={r.dendrite.status_code} msg={str(r.dendrite.status_message)[:80]!r} prediction={r.prediction}")
    await d_bob.aclose_session()
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--miner-hotkey", required=True, help="ss58 hotkey the miner serves as")
    ap.add_argument("--image", required=True, help="path to a JPEG")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--timeout", type=float, default=9.0, help="synapse timeout (NATIX validator: 9)")
    args = ap.parse_args()
    c = asyncio.run(run(args))
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
