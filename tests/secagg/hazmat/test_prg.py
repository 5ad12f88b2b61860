"""AES-CTR mask expansion: the NIST vector, exact modular sums, chunking, memory."""

import itertools
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.hazmat import prg


def test_nist_sp800_38a_f55_ctr_aes256():
    """NIST SP 800-38A F.5.5 CTR-AES256.Encrypt: keystream XOR plaintext gives the ciphertext."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    expected = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5")
    stream = prg.keystream(key, 32, counter_block=counter)
    assert bytes(a ^ b for a, b in zip(stream, plaintext, strict=True)) == expected


def _naive(terms, size, dtype):
    total = np.zeros(size, dtype=dtype)
    for term in terms:
        words = np.frombuffer(
            prg.keystream(term.seed, size * np.dtype(dtype).itemsize),
            dtype=f"<u{np.dtype(dtype).itemsize}",
        )
        total = total - words if term.subtract else total + words
    return total


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 3000),
    count=st.integers(1, 7),
    chunk_blocks=st.integers(1, 300),
    group=st.integers(1, 5),
    wide=st.booleans(),
    signs=st.lists(st.booleans(), min_size=7, max_size=7),
)
def test_accumulate_equals_sum_of_keystreams(size, count, chunk_blocks, group, wide, signs):
    """Chunked, grouped accumulation equals the plain modular sum of each seed's keystream."""
    dtype = np.uint64 if wide else np.uint32
    terms = [prg.MaskTerm(bytes([i]) * 32, signs[i]) for i in range(count)]
    out = np.zeros(size, dtype=dtype)
    prg.accumulate(out, terms, chunk_bytes=16 * chunk_blocks, group=group)
    assert np.array_equal(out, _naive(terms, size, dtype))


def test_add_then_subtract_cancels():
    """The pairwise-mask identity: +PRG(s) and -PRG(s) cancel exactly mod 2^32."""
    start = np.arange(1000, dtype=np.uint32)
    out = start.copy()
    seed = os.urandom(32)
    prg.accumulate(out, [prg.MaskTerm(seed), prg.MaskTerm(seed, subtract=True)])
    assert np.array_equal(out, start)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_slice_at_an_offset_gets_that_part_of_the_keystream(dtype):
    """accumulate(out[a:b], offset=a) adds exactly words a..b of every keystream: slices
    unmasked one by one give the whole vector unmasked at once (chunk boundaries included)."""
    terms = [prg.MaskTerm(os.urandom(32)), prg.MaskTerm(os.urandom(32), subtract=True)]
    whole = np.arange(10_000, dtype=dtype)
    pieces = whole.copy()
    prg.accumulate(whole, terms, chunk_bytes=1024)
    step = 16 // np.dtype(dtype).itemsize
    bounds = [0, 4 * step, 100 * step, 2500 * step // 4 * 4, 10_000]
    for start, stop in itertools.pairwise(bounds):
        prg.accumulate(pieces[start:stop], terms, chunk_bytes=1024, offset=start)
    assert np.array_equal(pieces, whole)
    with pytest.raises(ValueError, match="16-byte blocks"):
        prg.accumulate(pieces[1:], terms, offset=1)


def test_memory_does_not_grow_with_the_number_of_seeds():
    """Masking memory is O(d + chunk): 64 seeds use about as much as 2 (DESIGN.md Sec. 7)."""
    out = np.zeros(200_000, dtype=np.uint32)

    def peak(count):
        terms = [prg.MaskTerm(os.urandom(32)) for _ in range(count)]
        tracemalloc.start()
        prg.accumulate(out, terms, chunk_bytes=1 << 14, group=4)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    assert peak(64) < 2 * peak(2) + 64 * 1024
    assert peak(64) < out.nbytes  # far below one extra vector per seed


def test_bad_arguments():
    """Wrong array types and chunk sizes are refused with the pyca error types."""
    with pytest.raises(TypeError):
        prg.accumulate(np.zeros(4, dtype=np.int32), [prg.MaskTerm(bytes(32))])
    with pytest.raises(TypeError):
        prg.accumulate(np.zeros((2, 2), dtype=np.uint32), [prg.MaskTerm(bytes(32))])
    with pytest.raises(ValueError):
        prg.accumulate(np.zeros(4, dtype=np.uint32), [prg.MaskTerm(bytes(32))], chunk_bytes=10)
    with pytest.raises(ValueError):
        prg.accumulate(np.zeros(4, dtype=np.uint32), [prg.MaskTerm(bytes(16))])


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 2000), chunk_blocks=st.integers(1, 40), count=st.integers(0, 3))
def test_fill_and_drain_see_every_chunk_once_in_order(size, chunk_blocks, count):
    """fill writes each chunk's plain words before the masks are added, drain reads each chunk
    after: together they equal writing the whole vector, masking it, then reading it (with no
    terms at all, the hooks still run)."""
    terms = [prg.MaskTerm(bytes([i + 1]) * 32) for i in range(count)]
    plain = np.arange(size, dtype=np.uint32) * np.uint32(2654435761)
    out = np.zeros(size, dtype=np.uint32)
    starts, drained = [], np.zeros(size, dtype=np.uint32)

    def fill(start, segment):
        starts.append(start)
        segment[...] = plain[start : start + segment.size]

    def drain(start, segment):
        drained[start : start + segment.size] = segment

    prg.accumulate(out, terms, chunk_bytes=16 * chunk_blocks, fill=fill, drain=drain)
    expected = plain + _naive(terms, size, np.uint32)
    assert starts == list(range(0, size, 4 * chunk_blocks))
    assert np.array_equal(out, expected) and np.array_equal(drained, expected)


def test_keystream_reader_reads_into_a_buffer_as_it_reads_bytes():
    """read_into continues the same stream as calling the reader, and refuses a buffer without
    the slack OpenSSL writes into."""
    seed = os.urandom(32)
    reader = prg.KeystreamReader(seed)
    buffer = bytearray(100 + prg.KeystreamReader.SLACK)
    first = reader(7)
    reader.read_into(buffer, 100)
    assert first + bytes(buffer[:100]) == prg.keystream(seed, 107)
    with pytest.raises(ValueError, match="buffer"):
        reader.read_into(bytearray(100), 100)
