"""Tests for ``models/tf_bundle.py``: reading TensorFlow checkpoints without TensorFlow.

``tests/data/tiny_bundle`` was written by TensorFlow (``tools/make_yamnet_golden.py``) with one
tensor of each common dtype; ``tiny_bundle.npz`` holds the values TensorFlow was given.
"""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from models.tf_bundle import (BundleEntry, BundleError, TensorBundle, bundle_prefix, crc32c, mask_crc,
                              parse_fields, read_table, read_varint)

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny_bundle" / "ckpt"


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint; returns its prefix."""
    folder = tmp_path / "bundle"
    shutil.copytree(TINY.parent, folder)
    return folder / "ckpt"


def test_every_tensor_equals_what_tensorflow_wrote():
    """Values, dtypes and shapes of all 40 tensors (float32/64/16, int32/64, bool, uint8, scalar)."""
    bundle = TensorBundle(TINY)
    expected = np.load(DATA / "tiny_bundle.npz")
    assert sorted(expected.files) == [key for key in bundle.keys() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    for key in expected.files:
        value = bundle.read(key, verify=True)
        assert value.dtype == expected[key].dtype, key
        assert value.shape == expected[key].shape, key
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


def test_keys_are_sorted_and_prefix_compressed_names_are_whole():
    """The table stores keys prefix-compressed; every decoded name is complete and in sorted order."""
    entries = read_table(TINY.with_suffix(".index"))
    keys = [key for key, _ in entries]
    assert keys == sorted(keys) and keys[0] == b""  # the header sorts first
    assert b"layer_with_weights_17_kernel/.ATTRIBUTES/VARIABLE_VALUE" in keys


def test_string_tensor_is_read_as_bytes():
    """The object graph (a DT_STRING scalar) comes back as bytes of the length the index gives."""
    bundle = TensorBundle(TINY)
    graph = bundle.read("_CHECKPOINTABLE_OBJECT_GRAPH")
    assert graph.shape == () and isinstance(graph.item(), bytes) and len(graph.item()) > 100


def test_real_saved_model_from_the_carrier_package():
    """YAMNet's SavedModel in the carrier package: 113 tensors, the first conv's kernel shape."""
    from models.convert import carrier_saved_model

    bundle = TensorBundle(carrier_saved_model())
    assert len(bundle.keys()) == 113
    key = "layer-1/layer/_func/_yamnet/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert bundle.shape(key) == (3, 3, 1, 32)
    kernel = bundle.read(key, verify=True)
    assert kernel.dtype == np.float32 and np.isfinite(kernel).all() and kernel.std() > 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    """A LevelDB block: prefix-compressed entries, a restart point every ``restart_interval``."""
    body, restarts, previous = bytearray(), [], b""
    for index, (key, value) in enumerate(entries):
        shared = 0
        if index % restart_interval == 0:
            restarts.append(len(body))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    return bytes(body) + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def _table(blocks: list[list[tuple[bytes, bytes]]]) -> bytes:
    """A table file: data blocks, an empty metaindex, the index block and the footer."""
    data, index_entries = bytearray(), []

    def append(block: bytes) -> bytes:
        handle = _varint(len(data)) + _varint(len(block))
        data.extend(block + bytes([0]) + struct.pack("<I", mask_crc(crc32c(block + bytes([0])))))
        return handle

    for entries in blocks:
        index_entries.append((entries[-1][0], append(_block(entries))))
    meta_handle = append(_block([]))
    index_handle = append(_block(index_entries, restart_interval=1))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(data) + footer


def test_table_of_several_blocks_reads_every_entry(tmp_path):
    """Entries spread over three data blocks with restarts come back in order (hand-built table)."""
    entries = [(f"layer/{index:02d}/kernel".encode(), bytes([index]) * (index % 5)) for index in range(12)]
    path = tmp_path / "t.index"
    path.write_bytes(_table([entries[:5], entries[5:9], entries[9:]]))
    assert read_table(path) == entries


def test_prefix_from_folder_index_file_or_prefix(tmp_path):
    """A SavedModel folder, its variables folder, the .index file and the bare prefix all work."""
    variables = tmp_path / "model" / "variables"
    variables.mkdir(parents=True)
    (variables / "variables.index").write_bytes(b"")
    assert bundle_prefix(tmp_path / "model") == variables / "variables"
    assert bundle_prefix(variables / "variables.index") == variables / "variables"
    assert bundle_prefix(TINY) == TINY
    with pytest.raises(BundleError, match="no variables/variables.index"):
        bundle_prefix(tmp_path)


def test_varints_and_protobuf_fields():
    """Hand-made wire bytes: multi-byte varint, length-delimited field, fixed32."""
    assert read_varint(bytes([0xAC, 0x02]), 0) == (300, 2)
    message = bytes([0x08, 0x01]) + bytes([0x12, 0x03]) + b"abc" + bytes([0x35]) + struct.pack("<I", 7)
    assert parse_fields(message) == [(1, 0, 1), (2, 2, b"abc"), (6, 5, 7)]
    with pytest.raises(BundleError, match="truncated"):
        read_varint(bytes([0x80]), 0)


def test_bundle_entry_with_shape():
    """BundleEntryProto: dtype 1 (float), shape [2, 3], offset 8, size 24."""
    dim = lambda size: bytes([0x12, 0x02, 0x08, size])  # noqa: E731  (Dim{size})
    shape = dim(2) + dim(3)
    message = bytes([0x08, 0x01, 0x12, len(shape)]) + shape + bytes([0x20, 0x08, 0x28, 0x18])
    entry = BundleEntry.parse(message)
    assert (entry.dtype, entry.shape, entry.offset, entry.size, entry.crc32c) == (1, (2, 3), 8, 24, None)


def test_crc32c_known_value():
    """CRC-32C check value of '123456789' (RFC 3720) and LevelDB's mask."""
    assert crc32c(b"123456789") == 0xE3069283
    assert mask_crc(0) == 0xA282EAD8


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    """A file without the table magic number is named in the error."""
    fake = tmp_path / "x.index"
    fake.write_bytes(b"hello" * 20)
    with pytest.raises(BundleError, match=r"x\.index: not a TensorFlow checkpoint index"):
        TensorBundle(fake)


def test_unknown_key_names_the_index(tiny_copy):
    """KeyError names the checkpoint and the number of tensors."""
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        TensorBundle(tiny_copy).read("nope")


# --- damaged bundles: every error names the file and says what to do --------------------

REMEDY = "download the model again"


def _bundle_with_entry(prefix: Path, key: bytes, entry: bytes) -> Path:
    """A hand-built one-tensor bundle index at ``prefix.index`` whose entry bytes are ``entry``."""
    header = bytes([0x08, 0x01])  # BundleHeaderProto{num_shards: 1}
    prefix.with_name(prefix.name + ".index").write_bytes(_table([[(b"", header), (key, entry)]]))
    return prefix


@pytest.mark.parametrize("keep", [0, 47, 1000, -1], ids=["empty", "footer-only", "half", "last-byte-cut"])
def test_truncated_index_names_the_file_and_the_remedy(tiny_copy, keep):
    index = tiny_copy.with_suffix(".index")
    data = index.read_bytes()
    index.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(BundleError, match=rf"^{re.escape(str(index))}: .*truncated.*; .*{REMEDY}"):
        TensorBundle(tiny_copy)


def test_corrupt_index_block_says_what_to_do(tiny_copy):
    index = tiny_copy.with_suffix(".index")
    data = bytearray(index.read_bytes())
    data[20] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(index))}: checksum mismatch .*{REMEDY}"):
        TensorBundle(tiny_copy)


def test_bad_varint_in_the_footer_names_the_file(tiny_copy):
    """A footer whose block handle never ends (11 continuation bytes) is not a bare 'varint' error."""
    index = tiny_copy.with_suffix(".index")
    data = bytearray(index.read_bytes())
    data[-48:-37] = b"\xff" * 11
    index.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(index))}: cannot decode the table "
                                          rf"\(varint longer than 10 bytes\); .*{REMEDY}"):
        TensorBundle(tiny_copy)


@pytest.mark.parametrize("entry, reason", [
    (bytes([0x08]), "truncated varint"),  # dtype's value missing
    (bytes([0x31, 0x01, 0x02]), "truncated fixed64 field"),  # struct.error before
    (bytes([0x12, 0x09, 0x12]), "truncated length-delimited field"),
    (bytes([0x0F]), "unsupported protobuf wire type 7"),
], ids=["varint", "fixed64", "length-delimited", "wire-type"])
def test_undecodable_index_entry_names_the_file_and_the_tensor(tmp_path, entry, reason):
    """Table blocks with valid checksums but a broken BundleEntryProto inside."""
    prefix = _bundle_with_entry(tmp_path / "ckpt", b"w/.ATTRIBUTES/VARIABLE_VALUE", entry)
    with pytest.raises(BundleError, match=rf"^{re.escape(str(prefix))}\.index: cannot decode the entry "
                                          rf"b'w/\.ATTRIBUTES/VARIABLE_VALUE' \({reason}\); .*{REMEDY}"):
        TensorBundle(prefix)


def test_block_entry_running_past_its_block_names_the_file(tmp_path):
    """A block whose entry claims more bytes than the block holds (an IndexError-free, named error)."""
    block = bytes([0, 1, 200]) + b"k" + struct.pack("<I", 0) + struct.pack("<I", 1)  # value of 200 bytes: none there
    data = block + bytes([0]) + struct.pack("<I", mask_crc(crc32c(block + bytes([0]))))
    handle = _varint(0) + _varint(len(block))
    footer = (handle + handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    path = tmp_path / "x.index"
    path.write_bytes(data + footer)
    with pytest.raises(BundleError, match=rf"x\.index: cannot decode the table \(entry runs past the end of its "
                                          rf"block\); .*{REMEDY}"):
        read_table(path)


def test_missing_data_shard_names_the_file_and_the_remedy(tiny_copy):
    data_file = tiny_copy.with_name("ckpt.data-00000-of-00001")
    data_file.unlink()
    with pytest.raises(BundleError, match=rf"^{re.escape(str(data_file))}: data file \(shard 0 of 1\) of the "
                                          rf"checkpoint .* not found \(needed for 'matrix.*{REMEDY}"):
        TensorBundle(tiny_copy).read("matrix/.ATTRIBUTES/VARIABLE_VALUE")


def test_entry_in_a_shard_the_header_does_not_have_is_refused(tmp_path):
    """shard_id 3 of a 1-shard bundle: an index/data mismatch named at load, not a missing-file later."""
    prefix = _bundle_with_entry(tmp_path / "ckpt", b"w", bytes([0x08, 0x01, 0x18, 0x03]))  # dtype 1, shard 3
    with pytest.raises(BundleError, match=rf"ckpt\.index: 'w' lives in shard 3, but the header says there are "
                                          rf"1 shard\(s\); .*{REMEDY}"):
        TensorBundle(prefix)


def test_truncated_and_corrupt_data_say_what_to_do(tiny_copy):
    data_file = tiny_copy.with_name("ckpt.data-00000-of-00001")
    bundle = TensorBundle(tiny_copy)
    key = "matrix/.ATTRIBUTES/VARIABLE_VALUE"
    entry = bundle.entries[key]
    raw = bytearray(data_file.read_bytes())
    raw[entry.offset] ^= 0x01
    data_file.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(data_file))}: checksum mismatch for 'matrix.*{REMEDY}"):
        bundle.read(key, verify=True)
    data_file.write_bytes(bytes(raw[:entry.offset + 4]))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(data_file))}: 'matrix.* needs {entry.size} bytes at "
                                          rf"byte {entry.offset}; .*truncated download.*{REMEDY}"):
        bundle.read(key)


def test_size_that_does_not_match_the_shape_names_the_index(tmp_path):
    """An entry whose size disagrees with dtype x shape (offset/size mismatch) names the index."""
    shutil.copytree(TINY.parent, tmp_path / "b")
    dim = bytes([0x12, 0x02, 0x08, 0x03])  # Dim{size: 3}
    entry = bytes([0x08, 0x01, 0x12, len(dim)]) + dim + bytes([0x20, 0x00, 0x28, 0x08])  # float (3,), 8 bytes
    prefix = _bundle_with_entry(tmp_path / "b" / "ckpt", b"w", entry)
    with pytest.raises(BundleError, match=rf"ckpt\.index: 'w' of shape \(3,\) and dtype float32 should hold 12 "
                                          rf"bytes, the index says 8; .*{REMEDY}"):
        TensorBundle(prefix).read("w")


def test_corrupt_string_tensor_names_the_data_file(tiny_copy):
    """Garbage where a string tensor's length varints are: a named error, not IndexError or a bare varint one."""
    data_file = tiny_copy.with_name("ckpt.data-00000-of-00001")
    key = "_CHECKPOINTABLE_OBJECT_GRAPH"
    entry = TensorBundle(tiny_copy).entries[key]
    raw = bytearray(data_file.read_bytes())
    raw[entry.offset:entry.offset + 11] = b"\xff" * 11
    data_file.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=rf"^{re.escape(str(data_file))}: cannot decode the string tensor "
                                          rf"'{key}' at byte {entry.offset} \(varint longer than 10 bytes\); .*{REMEDY}"):
        TensorBundle(tiny_copy).read(key)
    raw[entry.offset:entry.offset + 11] = bytes([0xFF, 0x7F]) + bytes(9)  # one string of 16383 bytes: too long
    data_file.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=rf"cannot decode the string tensor '{key}' .*need 16389 bytes, the "
                                          rf"tensor has {entry.size}"):
        TensorBundle(tiny_copy).read(key)
