"""The trimmed Autobahn paths give the same bytes as Autobahn's own."""

from __future__ import annotations

import random

from autobahn.websocket.xormasker import create_xor_masker as native

import wsbalancer.wire.lean as lean
import wsbalancer.wire.patches as patches


def test_small_frames_are_masked_exactly_as_autobahn_does_in_any_chunking() -> None:
    rng = random.Random(3)
    for size in [0, 1, 2, 3, 4, 5, 7, 125, 126, 1023, 1024]:
        mask, data = rng.randbytes(4), rng.randbytes(size)
        expected = native(mask, size).process(data) if size else b""
        masker = lean.create_xor_masker(mask, size)
        assert isinstance(masker, lean.SmallFrameMasker)
        cut = sorted(rng.sample(range(size + 1), min(3, size + 1)))
        pieces = [data[a:b] for a, b in zip([0, *cut], [*cut, size], strict=True)]
        assert b"".join(masker.process(piece) for piece in pieces) == expected
        assert masker.pointer() == size
        masker.reset()
        assert masker.pointer() == 0 and masker.process(data) == expected


def test_large_frames_keep_the_native_masker_and_autobahn_uses_the_lean_factory() -> None:
    import autobahn.websocket.protocol as autobahn_protocol

    assert "small-frame-masker" in patches.install().applied  # (conftest installed it already)
    assert autobahn_protocol.create_xor_masker is lean.create_xor_masker
    big = lean.create_xor_masker(b"abcd", lean.SMALL_FRAME + 1)
    assert not isinstance(big, lean.SmallFrameMasker)
    data = bytes(range(256)) * 8
    assert big.process(data[:5]) + big.process(data[5:]) == native(b"abcd").process(data)
