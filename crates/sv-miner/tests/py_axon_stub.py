#!/usr/bin/env python3
"""Reference axon: bittensor 10.2.0's own `bt.Axon` serving NATIX's ImageSynapse on loopback.

Used only to check dendrite_test.py and to record what the real axon answers (see PROTOCOL.md).
Run:  python3 crates/sv-miner/tests/py_axon_stub.py --port 18092 [--miner-uri //Charlie] [--allow <ss58> ...]
Prints the miner hotkey ss58 on its first line. The prediction is a deterministic stand-in
(len(image bytes) % 1000 / 1000), not a model.
"""
import argparse
import base64
import time
import types
import typing

import bittensor.utils.networking as _net

_net.get_external_ip = lambda: "127.0.0.1"  # offline: never look up a public IP

import bittensor as bt  # noqa: E402
import pydantic  # noqa: E402
from bittensor_wallet import Keypair  # noqa: E402


# Copied from natixnetwork/streetvision-subnet natix/protocol.py (class ImageSynapse, lines 71-104).
class ImageSynapse(bt.Synapse):
    testnet_label: int = -1  # for easier miner eval on testnet
    image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)
    prediction: float = pydantic.Field(
        title="Prediction",
        description="Probability that the image is AI generated/modified",
        default=-1.0,
        frozen=False,
    )

    def deserialize(self) -> float:
        return self.prediction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18092)
    ap.add_argument("--miner-uri", default="//Charlie")
    ap.add_argument("--allow", nargs="*", default=None, help="allowed dendrite hotkeys (default: //Alice)")
    args = ap.parse_args()
    allow = set(args.allow or [Keypair.create_from_uri("//Alice").ss58_address])

    miner = Keypair.create_from_uri(args.miner_uri)
    wallet = types.SimpleNamespace(hotkey=miner, coldkeypub=miner)  # Axon only uses these two

    def forward(synapse: ImageSynapse) -> ImageSynapse:
        synapse.prediction = (len(base64.b64decode(synapse.image)) % 1000) / 1000.0
        return synapse

    def blacklist(synapse: ImageSynapse) -> typing.Tuple[bool, str]:
        if synapse.dendrite.hotkey not in allow:
            return True, "Unrecognized hotkey"
        return False, "Allowed"

    axon = bt.Axon(wallet=wallet, ip="127.0.0.1", port=args.port, external_ip="127.0.0.1")
    axon.fast_config.host = "127.0.0.1"  # bt.Axon hard-codes 0.0.0.0; keep the stub on loopback
    axon.attach(forward_fn=forward, blacklist_fn=blacklist)
    axon.start()
    print(miner.ss58_address, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        axon.stop()


if __name__ == "__main__":
    main()
