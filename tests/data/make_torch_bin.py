#!/usr/bin/env python3
"""Writes pytorch_model.bin test fixtures from a safetensors model, laid out as torch.save does.

Usage: make_torch_bin.py MODEL_DIR OUT_DIR [VARIANT...]

PyTorch is not needed. Fake `torch`, `torch._utils` and `torch.storage` modules are registered so
that Python's pickle writes the GLOBAL opcodes torch.save's pickler writes (torch/serialization.py
_save, torch/_tensor.py _reduce_ex_internal), and the ZIP container is written as PyTorch's
writer lays it out (caffe2/serialize/inline_container.cc over miniz with ZIP64 enabled): records
data.pkl, .format_version, .storage_alignment, byteorder, data/<key>..., version,
.data/serialization_id, each stored uncompressed with its data aligned to 64 bytes by an "FB"
extra field, a local header without sizes and a data descriptor after the data, then the
central directory, a ZIP64 end record, its locator and the end record.

Each variant (all when none is named) is a model directory in OUT_DIR, with the config and
tokenizer files copied:
  bin/            pytorch_model.bin, a plain dict (what transformers writes today)
  bin-ordered/    an OrderedDict with _metadata (model.state_dict()); the q/k/v projections of
                  each layer share one storage at different offsets
  bin-sharded/    two shards + pytorch_model.bin.index.json
  bin-wrapped/    {'state_dict': ..., 'epoch': 3, 'lr': 1e-3}, pickle protocol 4
  extra/          one float8 tensor (_rebuild_tensor_v3 over an UntypedStorage) and one
                  _rebuild_parameter, no config
and hostile variants, each refused by a correct reader:
  evil-os-system/ evil-eval/   a REDUCE of os.system / builtins.eval (they would create the file
                               PWNED beside the checkpoint if they ran)
  bad-opcode/     a set in the state dict (protocol 4 EMPTY_SET)
  truncated/      the archive cut in half
  offset-past-end/  a tensor whose elements run past its storage
  wrong-storage-size/  a storage declared larger than its record
  zip-offset/     a central directory entry pointing past the end of the file
  noncontiguous/  a transposed tensor
  compressed/     deflated records
  legacy/         the pre-1.6 torch.save format
Each archive is checked with Python's zipfile (an independent ZIP reader) before it is kept.
"""

import collections
import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile
import zlib

# --- fake torch -------------------------------------------------------------------------------

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch_storage = types.ModuleType("torch.storage")
torch._utils = torch_utils
torch.storage = torch_storage
sys.modules.update({"torch": torch, "torch._utils": torch_utils, "torch.storage": torch_storage})


def _pickled_only(name):
    def f(*args):
        raise RuntimeError(f"{name} is only pickled by reference")

    f.__module__ = "torch._utils"
    f.__name__ = f.__qualname__ = name
    setattr(torch_utils, name, f)
    return f


rebuild_tensor_v2 = _pickled_only("_rebuild_tensor_v2")
rebuild_tensor_v3 = _pickled_only("_rebuild_tensor_v3")
rebuild_parameter = _pickled_only("_rebuild_parameter")

# safetensors dtype -> (torch storage class, element size); torch/storage.py
# _dtype_to_storage_type_map().
STORAGE_CLASSES = {
    "F64": ("DoubleStorage", 8), "F32": ("FloatStorage", 4), "F16": ("HalfStorage", 2),
    "BF16": ("BFloat16Storage", 2), "I64": ("LongStorage", 8), "I32": ("IntStorage", 4),
    "I16": ("ShortStorage", 2), "I8": ("CharStorage", 1), "U8": ("ByteStorage", 1),
    "BOOL": ("BoolStorage", 1),
}
for _cls, _ in STORAGE_CLASSES.values():
    setattr(torch, _cls, type(_cls, (), {"__module__": "torch"}))
UntypedStorage = type("UntypedStorage", (), {"__module__": "torch.storage"})
torch_storage.UntypedStorage = UntypedStorage
torch.UntypedStorage = UntypedStorage


class DType:
    """torch.dtype pickles as the global torch.<name>."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name


DType.__module__ = "torch"
torch.float8_e4m3fn = DType("float8_e4m3fn")

# A stand-in global whose GLOBAL opcode is rewritten into a dangerous one after pickling.
marker = types.ModuleType("amalgam_fixture_marker")
sys.modules["amalgam_fixture_marker"] = marker


def _marker_callable(*args):
    raise RuntimeError("never called")


_marker_callable.__module__ = "amalgam_fixture_marker"
_marker_callable.__name__ = _marker_callable.__qualname__ = "call"
marker.call = _marker_callable
MARKER_GLOBAL = b"camalgam_fixture_marker\ncall\n"


class Storage:
    def __init__(self, dtype, data, untyped=False):
        self.dtype, self.data, self.untyped = dtype, data, untyped
        self.declared_numel = None  # overrides the element count in the persistent id


class Tensor:
    def __init__(self, storage, offset, shape, stride=None, v3_dtype=None, parameter=False):
        self.storage, self.offset, self.shape = storage, offset, tuple(shape)
        if stride is None:
            stride, n = [], 1
            for d in reversed(self.shape):
                stride.insert(0, n)
                n *= d
        self.stride = tuple(stride)
        self.v3_dtype, self.parameter = v3_dtype, parameter

    def __reduce_ex__(self, proto):
        args = (self.storage, self.offset, self.shape, self.stride, False,
                collections.OrderedDict())
        if self.v3_dtype is not None:
            rebuilt = (rebuild_tensor_v3, args + (self.v3_dtype,))
        else:
            rebuilt = (rebuild_tensor_v2, args)
        if self.parameter:
            return (rebuild_parameter, (Rebuilt(rebuilt), False, collections.OrderedDict()))
        return rebuilt


class Rebuilt:
    def __init__(self, rv):
        self.rv = rv

    def __reduce_ex__(self, proto):
        return self.rv


class Evil:
    def __init__(self, arg):
        self.arg = arg

    def __reduce_ex__(self, proto):
        return (_marker_callable, (self.arg,))


def pickle_state(obj, protocol=2):
    """Pickles obj as torch.save does; returns (bytes, {key: Storage} in key order)."""
    keys = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if not isinstance(o, Storage):
                return None
            key = keys.setdefault(id(o), (str(len(keys)), o))[0]
            if o.untyped:
                cls, numel = UntypedStorage, len(o.data)
            else:
                name, size = STORAGE_CLASSES[o.dtype]
                cls, numel = getattr(torch, name), len(o.data) // size
            if o.declared_numel is not None:
                numel = o.declared_numel
            return ("storage", cls, key, "cpu", numel)

    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue(), {k: s for k, s in keys.values()}


# --- the zip container ------------------------------------------------------------------------

DOS_TIME, DOS_DATE = 0x6000, 0x5A21  # a fixed timestamp keeps the fixtures reproducible


class TorchZipWriter:
    """PyTorchStreamWriter over miniz (mz_zip_writer_add_mem_ex_v2, ZIP64 mode)."""

    def __init__(self, path, compress=False):
        self.out = open(path, "wb")
        self.prefix = os.path.splitext(os.path.basename(path))[0] + "/"
        self.central = []
        self.compress = compress

    def write_record(self, name, data):
        full = (self.prefix + name).encode()
        header_at = self.out.tell()
        stored = data
        method = 0
        if self.compress:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            stored = c.compress(data) + c.flush()
            method = 8
        # detail::getPadding: the data starts on a multiple of 64 after an "FB" extra field.
        start = header_at + 30 + len(full) + 4
        pad = (64 - start % 64) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        crc = zlib.crc32(data)
        flags = 0x0800 | (0x0008 if data else 0)
        self.out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20 if method else 0, flags, method,
                                   DOS_TIME, DOS_DATE, 0, 0, 0, len(full), len(extra)))
        self.out.write(full + extra + stored)
        if data:
            self.out.write(struct.pack("<IIII", 0x08074B50, crc, len(stored), len(data)))
        self.central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 20 if method else 0,
                                         flags, method, DOS_TIME, DOS_DATE, crc, len(stored),
                                         len(data), len(full), 0, 0, 0, 0, 0, header_at) + full)

    def close(self):
        cd_at = self.out.tell()
        cd = b"".join(self.central)
        self.out.write(cd)
        z64_at = self.out.tell()
        n = len(self.central)
        self.out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x002D, 0, 0, n, n,
                                   len(cd), cd_at))
        self.out.write(struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1))
        n16, size32, at32 = min(n, 0xFFFF), min(len(cd), 0xFFFFFFFF), min(cd_at, 0xFFFFFFFF)
        self.out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, size32, at32, 0))
        self.out.close()


def torch_save(obj, path, protocol=2, patch_pickle=None, compress=False):
    data_pkl, storages = pickle_state(obj, protocol)
    if patch_pickle:
        data_pkl = patch_pickle(data_pkl)
    w = TorchZipWriter(path, compress)
    w.write_record("data.pkl", data_pkl)
    w.write_record(".format_version", b"1")
    w.write_record(".storage_alignment", b"64")
    w.write_record("byteorder", b"little")
    for key, s in storages.items():
        w.write_record(f"data/{key}", s.data)
    w.write_record("version", b"3\n")
    w.write_record(".data/serialization_id", b"0" * 20 + b"%020d" % zlib.crc32(data_pkl))
    w.close()
    with zipfile.ZipFile(path) as z:  # an independent reader must accept the archive
        bad = z.testzip()
        assert bad is None, f"{path}: bad entry {bad}"


# --- the model --------------------------------------------------------------------------------


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    body = raw[8 + n:]
    out = collections.OrderedDict()
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], body[b:end])
    return out


def own_storage_tensors(model):
    return {name: Tensor(Storage(dt, data), 0, shape) for name, (dt, shape, data) in model.items()}


def shared_qkv_tensors(model):
    """The q/k/v projections of each layer viewed from one storage, as a fused qkv split."""
    out = collections.OrderedDict()
    groups = {}
    for name, (dt, shape, data) in model.items():
        if any(p in name for p in ("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            groups.setdefault(name.rsplit(".", 2)[0], []).append(name)
    shared = {}
    for layer, names in groups.items():
        dt = model[names[0]][0]
        s = Storage(dt, b"".join(model[n][2] for n in names))
        offset = 0
        for n in names:
            shared[n] = (s, offset)
            offset += len(model[n][2]) // STORAGE_CLASSES[dt][1]
    for name, (dt, shape, data) in model.items():
        if name in shared:
            s, offset = shared[name]
            out[name] = Tensor(s, offset, shape)
        else:
            out[name] = Tensor(Storage(dt, data), 0, shape)
    return out


def copy_model_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if f.endswith(".json") and not f.endswith(".index.json"):
            shutil.copy(os.path.join(src, f), dst)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    model = read_safetensors(os.path.join(src, "model.safetensors"))

    def directory(name, with_config=True):
        d = os.path.join(out, name)
        if with_config:
            copy_model_files(src, d)
        else:
            os.makedirs(d, exist_ok=True)
        return d

    def bin_path(name):
        return os.path.join(directory(name), "pytorch_model.bin")

    def plain(name):
        torch_save(dict(own_storage_tensors(model)), bin_path(name))

    def ordered(name):
        sd = collections.OrderedDict(shared_qkv_tensors(model))
        sd._metadata = collections.OrderedDict(
            [("", {"version": 1})] + [(n.rsplit(".", 1)[0], {"version": 1}) for n in model])
        torch_save(sd, bin_path(name))

    def sharded(name):
        d = directory(name)
        names = list(model)
        halves = [names[:len(names) // 2], names[len(names) // 2:]]
        tensors = own_storage_tensors(model)
        weight_map = {}
        for i, part in enumerate(halves):
            shard = f"pytorch_model-{i + 1:05d}-of-{len(halves):05d}.bin"
            torch_save({n: tensors[n] for n in part}, os.path.join(d, shard))
            weight_map.update({n: shard for n in part})
        total = sum(len(v[2]) for v in model.values())
        with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    def wrapped(name):
        torch_save({"state_dict": collections.OrderedDict(own_storage_tensors(model)), "epoch": 3,
                    "lr": 1e-3}, bin_path(name), protocol=4)

    def extra(name):
        f8 = Storage("U8", bytes(range(0, 256, 4)), untyped=True)  # 64 float8 values
        bf = Storage("BF16", bytes(range(16)))
        torch_save({"f8": Tensor(f8, 16, (4, 8), v3_dtype=torch.float8_e4m3fn),
                    "param": Tensor(bf, 0, (2, 4), parameter=True)},
                   os.path.join(directory(name, with_config=False), "pytorch_model.bin"))

    def evil(glob, command):
        def write(name):
            p = bin_path(name)
            pwned = os.path.join(os.path.abspath(os.path.dirname(p)), "PWNED")
            tensors = {"model.evil": Evil(command.format(pwned))}
            tensors.update(own_storage_tensors(model))
            torch_save(tensors, p, patch_pickle=lambda pkl: pkl.replace(MARKER_GLOBAL, glob))
        return write

    def bad_opcode(name):
        tensors = dict(own_storage_tensors(model))
        tensors["model.extra"] = {1, 2}
        torch_save(tensors, bin_path(name), protocol=4)

    def truncated(name):
        p = bin_path(name)
        torch_save(own_storage_tensors(model), p)
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 2)

    def offset_past_end(name):
        tensors = own_storage_tensors(model)
        tensors["model.norm.weight"].offset = 1  # one element past the end of its storage
        torch_save(tensors, bin_path(name))

    def wrong_storage_size(name):
        tensors = own_storage_tensors(model)
        tensors["model.norm.weight"].storage.declared_numel = model["model.norm.weight"][1][0] * 2
        torch_save(tensors, bin_path(name))

    def zip_offset(name):
        p = bin_path(name)
        torch_save(own_storage_tensors(model), p)
        with open(p, "r+b") as f:  # point data/0's local header past the end of the file
            raw = bytearray(f.read())
            at = raw.rfind(b"pytorch_model/data/0") - 46  # the central directory comes last
            assert raw[at:at + 4] == b"PK\x01\x02"
            struct.pack_into("<I", raw, at + 42, len(raw) + 1000)
            f.seek(0)
            f.write(raw)

    def noncontiguous(name):
        tensors = own_storage_tensors(model)
        w = "model.layers.0.mlp.down_proj.weight"
        rows, cols = model[w][1]
        tensors[w] = Tensor(tensors[w].storage, 0, (cols, rows), stride=(1, cols))
        torch_save(tensors, bin_path(name))

    def compressed(name):
        torch_save(own_storage_tensors(model), bin_path(name), compress=True)

    def legacy(name):
        with open(bin_path(name), "wb") as f:
            for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001}):
                pickle.dump(obj, f, protocol=2)

    variants = {
        "bin": plain, "bin-ordered": ordered, "bin-sharded": sharded, "bin-wrapped": wrapped,
        "extra": extra,
        "evil-os-system": evil(b"cos\nsystem\n", "touch '{}'"),
        "evil-eval": evil(b"cbuiltins\neval\n", "__import__('os').system(\"touch '{}'\")"),
        "bad-opcode": bad_opcode, "truncated": truncated, "offset-past-end": offset_past_end,
        "wrong-storage-size": wrong_storage_size, "zip-offset": zip_offset,
        "noncontiguous": noncontiguous, "compressed": compressed, "legacy": legacy,
    }
    for name in wanted or variants:
        if name not in variants:
            sys.exit(f"unknown variant {name}; known: {' '.join(variants)}")
        variants[name](name)


if __name__ == "__main__":
    main()
