"""Reading and writing safetensors files with numpy and torch alone (no extra package).

The format: 8 bytes (little-endian u64) giving the header's length, the header (JSON: per
tensor its dtype, shape and [begin, end) byte offsets into the data; "__metadata__" holds string
pairs), then the data. dualroute writes F32, F64, BF16, I32 and BOOL; all are read here (BF16 as
float32). Writes go to a temporary file in the same folder, then are renamed over the target, so
a crash never leaves half a file in place of a good one.
"""
import json
import os
import struct
import tempfile

import numpy as np
import torch

_TO_NUMPY = {'F32': np.float32, 'F64': np.float64, 'I32': np.int32, 'I64': np.int64, 'BOOL': np.bool_,
             'F16': np.float16, 'U8': np.uint8}
_FROM_TORCH = {torch.float32: 'F32', torch.float64: 'F64', torch.int32: 'I32', torch.int64: 'I64',
               torch.bool: 'BOOL', torch.float16: 'F16', torch.uint8: 'U8'}


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file."""


def read_header(path):
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f'{path}: too short to be a safetensors file ({len(head)} bytes)')
        (n,) = struct.unpack('<Q', head)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise SafetensorsError(f'{path}: the header claims {n} bytes but the file holds {size - 8} after the length')
        try:
            header = json.loads(f.read(n).decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f'{path}: the header is not JSON ({e})') from None
    return header, 8 + n


def load(path):
    """Returns (tensors: dict name -> torch.Tensor, metadata: dict of strings)."""
    header, start = read_header(path)
    meta = header.pop('__metadata__', {}) or {}
    out = {}
    with open(path, 'rb') as f:
        data = f.read()
    for name, h in header.items():
        b, e = h['data_offsets']
        raw = data[start + b:start + e]
        shape = list(h['shape'])
        dt = h['dtype']
        if dt == 'BF16':
            u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif dt in _TO_NUMPY:
            arr = np.frombuffer(raw, dtype=_TO_NUMPY[dt])
        else:
            raise SafetensorsError(f"{path}: tensor '{name}' has dtype {dt}, which this reader does not know")
        count = int(np.prod(shape)) if shape else 1
        if arr.size != count:
            raise SafetensorsError(f"{path}: tensor '{name}' of shape {shape} holds {arr.size} values")
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
    return out, meta


def save(path, tensors, metadata=None):
    """Writes tensors (dict name -> torch.Tensor) and string metadata, atomically."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
            dt = 'BF16'
        else:
            if t.dtype not in _FROM_TORCH:
                raise SafetensorsError(f"tensor '{name}': dtype {t.dtype} cannot be written")
            dt = _FROM_TORCH[t.dtype]
            raw = t.numpy().tobytes()
        header[name] = {'dtype': dt, 'shape': list(t.shape), 'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * ((8 - len(text) % 8) % 8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(struct.pack('<Q', len(text)))
            f.write(text)
            for raw in blobs:
                f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
