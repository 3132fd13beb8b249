"""Read TensorFlow checkpoints (tensor bundles) without TensorFlow.

A SavedModel keeps its weights in ``variables/variables.index`` plus
``variables/variables.data-00000-of-00001``. The index is a LevelDB-style sorted table
(SSTable) mapping each tensor's name to a serialized ``BundleEntryProto`` (dtype, shape, shard,
offset, size, crc32c); the data files hold the raw little-endian tensors back to back. Both
formats are small and stable, so this module parses them directly: the table's blocks and
footer, and the protobuf wire format (varints and length-delimited fields) by hand.

    bundle = TensorBundle("saved_model/variables/variables")   # the prefix, without suffixes
    bundle.keys()                                              # sorted tensor names
    bundle.read("layer-1/.../kernel/.ATTRIBUTES/VARIABLE_VALUE")  # numpy array

Not supported (an error says so): compressed table blocks, partitioned (sliced) variables and
big-endian bundles; none of them occur in SavedModels written by Keras.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, the last 8 bytes of the index
FOOTER_SIZE = 48  # two block handles (varints, padded to 40 bytes) + the magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)
HEADER_KEY = b""  # the entry holding the BundleHeaderProto sorts first

# TensorFlow DataType enum -> numpy dtype (little-endian). DT_STRING (7) is handled apart.
_NUMPY_DTYPES = {
    1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
    17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8",
}
DT_STRING = 7


# What to do about a damaged or incomplete bundle; every such error ends with it.
DAMAGED_REMEDY = ("the checkpoint is damaged or incomplete: download the model again "
                  "(or reinstall the package that ships it)")


class BundleError(ValueError):
    """A file that is not a readable TensorFlow tensor bundle; the message names it and says why."""


def _damaged(path: str | Path, what: str) -> BundleError:
    """``BundleError`` naming ``path``, what is wrong with it, and what to do."""
    return BundleError(f"{path}: {what}; {DAMAGED_REMEDY}")


class _DecodeError(BundleError):
    """Bytes that do not decode; raised where no file is known (the callers that know it add it)."""


# What bytes that do not decode raise deep in the parsers; caught where the file is known.
_DECODE_ERRORS = (_DecodeError, struct.error, IndexError, UnicodeDecodeError)


# ---------------------------------------------------------------------------------------
# crc32c (Castagnoli), as LevelDB and TensorFlow use it, with their masking
# ---------------------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (pure Python: about 10 MB/s, used for blocks and small tensors)."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB's masked CRC (stored checksums are masked so a CRC of CRCs stays informative)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# Protobuf wire format
# ---------------------------------------------------------------------------------------

def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``position``; return (value, position after it)."""
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise _DecodeError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise _DecodeError("varint longer than 10 bytes")


def parse_fields(message: bytes) -> list[tuple[int, int, int | bytes]]:
    """One protobuf message -> ``[(field_number, wire_type, value)]`` in wire order.

    Varints (wire type 0) and fixed 32/64-bit values (5/1) come back as ints, length-delimited
    fields (2) as bytes (a nested message, a string or a packed array).
    """
    fields = []
    position = 0
    while position < len(message):
        tag, position = read_varint(message, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = read_varint(message, position)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if position + width > len(message):
                raise _DecodeError(f"truncated fixed{8 * width} field")
            value = int.from_bytes(message[position:position + width], "little")
            position += width
        elif wire_type == 2:
            length, position = read_varint(message, position)
            value = message[position:position + length]
            if len(value) != length:
                raise _DecodeError("truncated length-delimited field")
            position += length
        else:
            raise _DecodeError(f"unsupported protobuf wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def _signed64(value: int) -> int:
    """A varint read as int64 (negative numbers are 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class BundleEntry:
    """``BundleEntryProto``: where one tensor lives in the data files."""

    dtype: int  # TensorFlow DataType enum value
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked crc32c of the tensor's bytes, when stored
    sliced: bool = False  # a partitioned variable (its slices live under other keys)

    @classmethod
    def parse(cls, message: bytes) -> "BundleEntry":
        """Decode a serialized ``BundleEntryProto``."""
        values: dict = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
        sliced = False
        for number, _, value in parse_fields(message):
            if number == 1:
                values["dtype"] = value
            elif number == 2:
                values["shape"] = _parse_shape(value)
            elif number == 3:
                values["shard_id"] = value
            elif number == 4:
                values["offset"] = value
            elif number == 5:
                values["size"] = value
            elif number == 6:
                values["crc32c"] = value
            elif number == 7:
                sliced = True
        return cls(**values, sliced=sliced)


def _parse_shape(message: bytes) -> tuple[int, ...]:
    """``TensorShapeProto`` -> dims (field 2, each a ``Dim`` with its size in field 1)."""
    dims = []
    for number, _, value in parse_fields(message):
        if number == 3 and value:
            raise _DecodeError("tensor of unknown rank")
        if number == 2:
            size = next((v for n, _, v in parse_fields(value) if n == 1), 0)
            dims.append(_signed64(size))
    return tuple(dims)


# ---------------------------------------------------------------------------------------
# The sorted table (LevelDB format)
# ---------------------------------------------------------------------------------------

def _block_handle(data: bytes, position: int) -> tuple[tuple[int, int], int]:
    """(offset, size) varints at ``position``; return them and the position after."""
    offset, position = read_varint(data, position)
    size, position = read_varint(data, position)
    return (offset, size), position


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of one block; keys are prefix-compressed against the previous key."""
    if len(block) < 4:
        raise _DecodeError("block shorter than its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts  # entries stop where the restart offsets begin
    if end < 0:
        raise _DecodeError("block restart array larger than the block")
    entries, key, position = [], b"", 0
    while position < end:
        shared, position = read_varint(block, position)
        non_shared, position = read_varint(block, position)
        value_length, position = read_varint(block, position)
        if shared > len(key):
            raise _DecodeError("key shares more bytes than the previous key has")
        if position + non_shared + value_length > end:
            raise _DecodeError("entry runs past the end of its block")
        key = key[:shared] + block[position:position + non_shared]
        position += non_shared
        entries.append((key, block[position:position + value_length]))
        position += value_length
    return entries


def read_table(path: str | Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an uncompressed LevelDB table file, in sorted key order."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise _damaged(path, f"not a TensorFlow checkpoint index (no table magic number at the end of its "
                             f"{len(data)} bytes: truncated, or another kind of file)")

    def block(handle: tuple[int, int]) -> bytes:
        offset, size = handle
        if offset + size + BLOCK_TRAILER_SIZE > len(data):
            raise _damaged(path, f"block at byte {offset} runs past the end of the file (truncated?)")
        contents = data[offset:offset + size]
        compression, stored_crc = struct.unpack_from("<BI", data, offset + size)
        if mask_crc(crc32c(data[offset:offset + size + 1])) != stored_crc:
            raise _damaged(path, f"checksum mismatch in the block at byte {offset} (corrupt file)")
        if compression != 0:
            raise BundleError(f"{path}: compressed table blocks (type {compression}) are not supported")
        return contents

    footer = data[len(data) - FOOTER_SIZE:]
    entries = []
    try:
        _, position = _block_handle(footer, 0)  # the metaindex block: unused by tensor bundles
        index_handle, _ = _block_handle(footer, position)
        for _, handle_bytes in _block_entries(block(index_handle)):
            handle, _ = _block_handle(handle_bytes, 0)
            entries.extend(_block_entries(block(handle)))
    except _DECODE_ERRORS as error:
        raise _damaged(path, f"cannot decode the table ({error or type(error).__name__})") from None
    return entries


# ---------------------------------------------------------------------------------------
# The bundle
# ---------------------------------------------------------------------------------------

def bundle_prefix(path: str | Path) -> Path:
    """The bundle prefix for a SavedModel folder, its ``variables`` folder, an ``.index`` file or a prefix."""
    path = Path(path)
    if path.is_dir():
        for prefix in (path / "variables" / "variables", path / "variables"):
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
        raise BundleError(f"{path}: no variables/variables.index in this folder (not a SavedModel?)")
    if path.suffix == ".index":
        return path.with_suffix("")
    return path


class TensorBundle:
    """The tensors of a TensorFlow checkpoint, read with numpy (no TensorFlow needed)."""

    def __init__(self, path: str | Path):
        self.prefix = bundle_prefix(path)
        index = self.prefix.with_name(self.prefix.name + ".index")
        if not index.is_file():
            raise BundleError(f"{index}: checkpoint index not found")
        self.index_path = index
        self.num_shards = 1
        self.entries: dict[str, BundleEntry] = {}
        for key, value in read_table(index):
            try:
                if key == HEADER_KEY:
                    self._read_header(value)
                else:
                    self.entries[key.decode("utf-8")] = BundleEntry.parse(value)
            except _DECODE_ERRORS as error:
                raise _damaged(index, f"cannot decode the entry {key!r} ({error or type(error).__name__})") from None
        for key, entry in self.entries.items():
            if not entry.sliced and entry.shard_id >= self.num_shards:
                raise _damaged(index, f"{key!r} lives in shard {entry.shard_id}, but the header says there are "
                                      f"{self.num_shards} shard(s)")

    def _read_header(self, message: bytes) -> None:
        """``BundleHeaderProto``: number of shards (1) and endianness (2; 0 = little)."""
        for number, _, value in parse_fields(message):
            if number == 1:
                self.num_shards = value
            elif number == 2 and value != 0:
                raise BundleError(f"{self.index_path}: big-endian checkpoints are not supported")

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of tensor ``key``."""
        return self._entry(key).shape

    def data_path(self, shard_id: int) -> Path:
        """The data file of one shard: ``<prefix>.data-00000-of-00001``."""
        return self.prefix.with_name(f"{self.prefix.name}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def _entry(self, key: str) -> BundleEntry:
        if key not in self.entries:
            raise KeyError(f"{self.index_path}: no tensor named {key!r} ({len(self.entries)} tensors)")
        return self.entries[key]

    def _raw(self, key: str, entry: BundleEntry) -> bytes:
        path = self.data_path(entry.shard_id)
        if not path.is_file():
            raise _damaged(path, f"data file (shard {entry.shard_id} of {self.num_shards}) of the checkpoint "
                                 f"{self.index_path} not found (needed for {key!r})")
        with open(path, "rb") as handle:
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
        if len(raw) != entry.size:
            raise _damaged(path, f"{key!r} needs {entry.size} bytes at byte {entry.offset}; the file is "
                                 f"shorter (truncated download?)")
        return raw

    def read(self, key: str, verify: bool = False) -> np.ndarray:
        """Tensor ``key`` as a numpy array (strings as an object array of bytes).

        ``verify`` checks the stored crc32c (pure Python, ~10 MB/s: meant for small tensors).
        """
        entry = self._entry(key)
        if entry.sliced:
            raise BundleError(f"{self.index_path}: {key!r} is a partitioned variable; not supported")
        raw = self._raw(key, entry)
        if verify and entry.crc32c is not None and mask_crc(crc32c(raw)) != entry.crc32c:
            raise _damaged(self.data_path(entry.shard_id), f"checksum mismatch for {key!r} (corrupt file)")
        if entry.dtype == DT_STRING:
            try:
                return self._strings(raw, entry.shape)
            except _DECODE_ERRORS as error:
                raise _damaged(self.data_path(entry.shard_id),
                               f"cannot decode the string tensor {key!r} at byte {entry.offset} ({error})") from None
        if entry.dtype not in _NUMPY_DTYPES:
            raise BundleError(f"{self.index_path}: {key!r} has TensorFlow dtype {entry.dtype}, not supported")
        dtype = np.dtype(_NUMPY_DTYPES[entry.dtype])
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise _damaged(self.index_path, f"{key!r} of shape {entry.shape} and dtype {dtype} should hold "
                                            f"{count * dtype.itemsize} bytes, the index says {entry.size}")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))

    @staticmethod
    def _strings(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """String tensor layout: varint length per element, a 4-byte checksum, then the bytes."""
        count = int(np.prod(shape, dtype=np.int64))
        lengths, position = [], 0
        for _ in range(count):
            length, position = read_varint(raw, position)
            lengths.append(length)
        position += 4  # masked crc32c of the lengths
        if position + sum(lengths) > len(raw):
            raise _DecodeError(f"the {count} string(s) need {position + sum(lengths)} bytes, the tensor has {len(raw)}")
        values = np.empty(count, dtype=object)
        for index, length in enumerate(lengths):
            values[index] = raw[position:position + length]
            position += length
        return values.reshape(shape)

    def read_all(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Every numeric tensor whose name starts with ``prefix``, by name."""
        return {key: self.read(key) for key in self.keys()
                if key.startswith(prefix) and self.entries[key].dtype != DT_STRING}
