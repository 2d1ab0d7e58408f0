"""Call a submission's code from the grader without running it there.

The submission's notebook runs in a sandbox (:mod:`transformer_course.tools.sandbox`); the grader
runs the checks, and the learner's functions, classes and objects are proxies in it (:class:`Remote`).
Calling a proxy sends a request over a socket; the sandbox runs the learner's code and answers.

The two directions are not alike, because only one side is trusted:
- grader -> sandbox: pickle. The sandbox may trust what the grader sends. Tensors travel by value
  (and come back changed if the learner's code changed them in place); the check's own functions
  and objects that cannot be pickled by reference (lambdas, closures, classes defined inside a
  check) stay in the grader and are called back.
- sandbox -> grader: plain data only, read by :func:`decode`, which builds nothing but None, bools,
  numbers, strings, bytes, lists, tuples, dicts, tensors, dtypes, sizes and devices, and proxies of
  the sandbox's other objects. Nothing the submission sends can run code in the grader: it controls
  what its functions return, and nothing else.

Proxies behave as the objects would for a check: ``isinstance(proxy, nn.Module)`` holds for a
module, its parameters come back as tensors (:class:`Mirror`) whose in-place changes are made in
the sandbox too, gradients flow back across the boundary (:class:`_Bridge`), the random number
generator's state travels with every request so that seeded checks draw the same numbers, and an
exception keeps its type, its message and the learner's line.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import io
import json
import math
import os
import pickle
import signal
import socket
import struct
import sys
import time
import types
import weakref

import torch

LIMIT = 512 * 2**20  # bytes one answer may hold: more is the submission's error, not our memory problem
DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
    torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)}
INPLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                   "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


class BridgeError(RuntimeError):
    """The sandbox broke the protocol, went away, or ran out of time."""


class RemoteError(Exception):
    """An exception raised in the sandbox whose type is not a builtin one (named after it)."""


# --- framing --------------------------------------------------------------------------------------

def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(payload)) + payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if k == 0:
            raise BridgeError("the sandbox closed the connection")
        got += k
    return bytes(buf)


def _recv(sock: socket.socket) -> bytes:
    (n,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if n > LIMIT:
        raise BridgeError(f"the sandbox sent {n / 2**20:.0f} MiB at once; at most {LIMIT / 2**20:.0f} MiB is read")
    return _recv_exact(sock, n)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _tensor_from(dtype: str, shape, data: bytes) -> torch.Tensor:
    if dtype not in DTYPES:
        raise BridgeError(f"unknown dtype {dtype!r}")
    dt = DTYPES[dtype]
    shape = [int(s) for s in shape]
    if any(s < 0 for s in shape) or math.prod(shape) * dt.itemsize != len(data):
        raise BridgeError("a tensor's bytes do not match its shape")
    if not data:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).reshape(shape).clone()


# --- sandbox -> grader: plain data ------------------------------------------------------------------

def _kind(x) -> tuple[str, str, str]:
    """(kind, name, the torch class it is made from) of an object the sandbox keeps."""
    cls = x if isinstance(x, type) else type(x)
    base = next((c for c in cls.__mro__ if c.__module__.split(".")[0] == "torch"), None)
    base = f"{base.__module__}.{base.__qualname__}" if base is not None else ""
    if isinstance(x, type):
        kind = "class"
    elif isinstance(x, torch.nn.Module):
        kind = "module"
    elif isinstance(x, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)):
        kind = "function"
    else:
        kind = "object"
    name = getattr(x, "__name__", None) if kind in ("class", "function") else cls.__name__
    return kind, name if isinstance(name, str) else cls.__name__, base


class Encoder:
    """What the sandbox sends: a JSON tree and the raw bytes of its tensors."""

    def __init__(self, peer):
        self.peer, self.buffers = peer, []

    def tensor(self, t: torch.Tensor, hid: int | None) -> dict:
        self.buffers.append(_tensor_bytes(t))
        d = {"t": "tensor", "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
             "b": len(self.buffers) - 1, "rg": bool(t.requires_grad), "param": isinstance(t, torch.nn.Parameter),
             "id": hid}
        if hid is None:  # a value only (a gradient, a write-back, the random state)
            return d
        if t.is_leaf and t.grad is not None:
            d["grad"] = self.tensor(t.grad, None)
        alias = self.peer.alias_of(t)
        if alias is not None:  # a view of a tensor the grader sent
            d["alias"] = alias
        else:  # where it lives in the sandbox: checks compare data_ptr() to find shared weights
            d["ptr"] = [t.data_ptr(), t.untyped_storage().data_ptr()]
        return d

    def __call__(self, x, depth: int = 0):
        if depth > 64:
            raise ValueError("the value is nested too deeply to send")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x if abs(x) < 2**53 else {"t": "int", "v": str(x)}
        if isinstance(x, float):
            return x if math.isfinite(x) else {"t": "float", "v": repr(x)}
        if isinstance(x, complex):
            return {"t": "complex", "v": [repr(x.real), repr(x.imag)]}
        if isinstance(x, (bytes, bytearray)):
            self.buffers.append(bytes(x))
            return {"t": "bytes", "b": len(self.buffers) - 1}
        lid = self.peer.local_id(x)
        if lid is not None:  # the grader's own object, sent here earlier
            return {"t": "local", "id": lid}
        if isinstance(x, torch.Size):
            return {"t": "size", "v": [int(s) for s in x]}
        if isinstance(x, torch.dtype):
            return {"t": "dtype", "v": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"t": "device", "v": "cpu"}
        if isinstance(x, torch.Tensor):
            d = self.tensor(x, self.peer.keep(x))
            if x.requires_grad and x.grad_fn is not None:
                d["bridge"] = True  # an output with a graph here: the grader's backward comes back for it
            return d
        if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            return self(x.item(), depth + 1)
        if type(x).__name__ == "ndarray" and type(x).__module__ == "numpy":
            return {"t": "ndarray", "v": self.tensor(torch.from_numpy(x.copy()), None)}
        if type(x) in (list, tuple):
            return {"t": type(x).__name__, "v": [self(v, depth + 1) for v in x]}
        if type(x) is dict:
            return {"t": "dict", "k": [self(k, depth + 1) for k in x], "v": [self(v, depth + 1) for v in x.values()]}
        kind, name, base = _kind(x)
        return {"t": "remote", "id": self.peer.keep(x), "kind": kind, "name": name, "base": base,
                "module": str(getattr(x, "__module__", "") or "")}


def decode(tree, buffers: list[bytes], peer) -> object:
    """Build the grader's values from what the sandbox sent: plain data and proxies, nothing else."""
    def go(x, depth=0):
        if depth > 100:
            raise BridgeError("the value is nested too deeply")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, list):
            raise BridgeError("malformed message")
        t = x.get("t")
        if t == "int":
            return int(x["v"])
        if t == "float":
            return float(x["v"])
        if t == "complex":
            return complex(float(x["v"][0]), float(x["v"][1]))
        if t == "bytes":
            return buffers[x["b"]]
        if t in ("list", "tuple"):
            items = [go(v, depth + 1) for v in x["v"]]
            return items if t == "list" else tuple(items)
        if t == "dict":
            return {go(k, depth + 1): go(v, depth + 1) for k, v in zip(x["k"], x["v"])}
        if t == "size":
            return torch.Size([int(s) for s in x["v"]])
        if t == "dtype":
            if x["v"] not in DTYPES:
                raise BridgeError(f"unknown dtype {x['v']!r}")
            return DTYPES[x["v"]]
        if t == "device":
            return torch.device("cpu")
        if t == "tensor":
            return peer.mirror(x, buffers)
        if t == "ndarray":
            return peer.mirror(x["v"], buffers).numpy()
        if t == "local":
            return peer.local(int(x["id"]))
        if t == "remote":
            return peer.proxy(int(x["id"]), str(x["kind"]), str(x["name"])[:80], str(x["base"]), str(x["module"]))
        raise BridgeError(f"unknown value type {t!r}")
    return go(tree)


def _pack(header: dict, buffers: list[bytes]) -> bytes:
    head = json.dumps(header, allow_nan=False).encode()
    sizes = struct.pack(f"<I{len(buffers)}Q", len(buffers), *map(len, buffers))
    return struct.pack("<I", len(head)) + head + sizes + b"".join(buffers)


def _unpack(payload: bytes) -> tuple[dict, list[bytes]]:
    (n,) = struct.unpack_from("<I", payload, 0)
    header = json.loads(payload[4:4 + n])
    at = 4 + n
    (k,) = struct.unpack_from("<I", payload, at)
    sizes = struct.unpack_from(f"<{k}Q", payload, at + 4)
    at += 4 + 8 * k
    buffers = []
    for s in sizes:
        buffers.append(payload[at:at + s])
        at += s
    if at != len(payload) or not isinstance(header, dict):
        raise BridgeError("malformed message")
    return header, buffers


# --- the state that travels with every request ----------------------------------------------------

def _state() -> dict:
    return {"rng": torch.get_rng_state(), "grad": torch.is_grad_enabled(), "dtype": torch.get_default_dtype()}


def _set_state(s: dict) -> None:
    torch.set_rng_state(s["rng"])
    torch.set_grad_enabled(bool(s["grad"]))
    if s["dtype"] in (torch.float32, torch.float64):
        torch.set_default_dtype(s["dtype"])


def _inplace(name: str) -> bool:
    return (name.endswith("_") and not name.startswith("_")) or name in INPLACE_DUNDERS


# --- the grader's side --------------------------------------------------------------------------

class Mirror(torch.Tensor):
    """A tensor the sandbox holds, copied here: torch sees a tensor; in-place changes are made in the
    sandbox first and copied back, so that a check can set a learner's weights. (Named Tensor in
    messages, where checks say what type the learner returned.)"""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else None
        name = getattr(func, "__name__", "")
        ptr = getattr(target, "_ptr", None) if isinstance(target, Mirror) else None
        if ptr is not None and name == "data_ptr":
            return ptr[0]
        if ptr is not None and name == "untyped_storage":
            return _Storage(ptr[1])
        if isinstance(target, Mirror) and getattr(target, "_link", None) and _inplace(name):
            conn, hid = target._link
            new = conn.request("inplace", hid, name, args[1:], kwargs)
            with torch._C.DisableTorchFunctionSubclass(), torch.no_grad():
                torch.Tensor.copy_(target, new)
            return target
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


Mirror.__name__ = Mirror.__qualname__ = "Tensor"


class _Storage:
    """A Mirror's storage, for the one thing checks ask of it: where it is (in the sandbox)."""

    def __init__(self, ptr: int):
        self.ptr = ptr

    def data_ptr(self) -> int:
        return self.ptr


class _Bridge(torch.autograd.Function):
    """The sandbox's output as a node of the grader's graph: backward asks the sandbox for the gradients
    of the tensors the grader sent (its parameters' gradients stay there, where they belong)."""

    @staticmethod
    def forward(ctx, conn, hid, value, anchor, *inputs):
        ctx.conn, ctx.hid = conn, hid
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        grads = ctx.conn.request("backward", ctx.hid, grad)
        return (None, None, None, None, *grads)


def _exception(d: dict) -> BaseException:
    name = str(d.get("type", "Exception"))
    cls = getattr(builtins, name, None)
    msg = str(d.get("msg", ""))[:4000]
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        ident = "".join(c for c in name if c.isalnum() or c == "_")[:60] or "RemoteError"
        cls = type(ident, (RemoteError,), {})
    try:
        e = cls(msg)
        if str(e) != msg:
            raise TypeError
    except Exception:  # UnicodeDecodeError and the like want more than a message: the same type, made simple
        cls = type(cls.__name__, (cls,), {"__init__": lambda self, m: Exception.__init__(self, m),
                                           "__str__": lambda self: self.args[0]})
        e = cls(msg)
    e.where = str(d.get("where", ""))[:500]
    return e


class Remote:
    """A proxy of an object in the sandbox: a function, class, module or any other object."""

    __slots__ = ("_conn", "_id", "_kind", "_name", "_base", "_module", "__weakref__")

    def __init__(self, conn, hid, kind, name, base, module):
        for k, v in (("_conn", conn), ("_id", hid), ("_kind", kind), ("_name", name), ("_base", base),
                     ("_module", module)):
            object.__setattr__(self, k, v)

    @property
    def __class__(self):  # isinstance(proxy, nn.Module) and friends see what the sandbox holds
        if self._kind == "class":
            return type
        if self._kind == "function":
            return types.FunctionType
        return self._conn.stand_in(self._name, self._base)

    @property
    def __name__(self):
        return self._name

    @property
    def __bases__(self):  # issubclass(proxy_of_a_class, nn.Module)
        return (self._conn.stand_in(self._name, self._base),) if self._kind == "class" else ()

    def __call__(self, *args, **kwargs):
        return self._conn.request("call", self._id, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._conn.request("getattr", self._id, name)

    def __setattr__(self, name, value):
        self._conn.request("setattr", self._id, name, value)

    def __getitem__(self, key):
        return self._conn.request("getitem", self._id, key)

    def __setitem__(self, key, value):
        self._conn.request("setitem", self._id, key, value)

    def __len__(self):
        return self._conn.request("len", self._id)

    def __iter__(self):
        return iter(self._conn.request("list", self._id))

    def __bool__(self):
        return self._conn.request("bool", self._id)

    def _beside(self, helper, args, kwargs):
        """helper(*args, **kwargs) run in the sandbox, where this object lives (helper: importable)."""
        return self._conn.request("run", helper.__module__, helper.__qualname__, args, kwargs)

    def __deepcopy__(self, memo):
        return self._conn.request("deepcopy", self._id)

    def __copy__(self):
        return self._conn.request("copy", self._id)

    def __repr__(self):
        return f"<{self._kind} {self._name} (in the sandbox)>"


class Grader:
    """The grader's end of the connection: requests to the sandbox, and the check's own objects that
    the sandbox may call back."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.locals: dict[int, object] = {}      # what the sandbox holds references to (callbacks, sent tensors)
        self.sent = weakref.WeakValueDictionary()  # lid -> tensor sent by value (aliases, write-backs)
        self.proxies = weakref.WeakValueDictionary()
        self.released: list[int] = []
        self.stand_ins: dict = {}
        self.next_lid = 0
        self.call_inputs: list = []
        self.sent_now: set = set()
        self.deadline: float | None = None       # time.monotonic() by which the current check must end
        self.read: dict = {}  # (hid, name) -> value, until a request that may change the sandbox's objects

    # identity of the grader's objects
    def new_lid(self) -> int:
        self.next_lid += 1
        return self.next_lid

    def local(self, lid: int):
        if lid in self.locals:
            return self.locals[lid]
        t = self.sent.get(lid)
        if t is None:
            raise BridgeError(f"the sandbox named an object the grader never sent ({lid})")
        return t

    def stand_in(self, name: str, base: str):
        """The class a proxy says it is: a subclass of the torch class it is made from, under its name."""
        key = (name, base)
        if key not in self.stand_ins:
            mod, _, qual = base.rpartition(".")
            cls = sys.modules.get(mod) if mod.split(".")[0] == "torch" else None  # only torch's classes
            for part in qual.split(".") if cls is not None else []:
                cls = getattr(cls, part, None)
            cls = cls if isinstance(cls, type) else object
            if name != cls.__name__:
                try:
                    cls = type(name if name.isidentifier() else "Remote", (cls,), {"__module__": "sandbox"})
                except TypeError:
                    pass
            self.stand_ins[key] = cls
        return self.stand_ins[key]

    def proxy(self, hid, kind, name, base, module):
        p = self.proxies.get(hid)
        if p is None:
            p = Remote(self, hid, kind, name, base, module)
            self.proxies[hid] = p
            weakref.finalize(p, self.released.append, hid)
        return p

    def mirror(self, d: dict, buffers) -> torch.Tensor:
        value = _tensor_from(d["dtype"], d["shape"], buffers[d["b"]])
        alias = d.get("alias")
        if alias is not None:  # a view of a tensor the grader sent: the same storage here too
            base = self.sent.get(int(alias[0]))
            if base is not None and base.dtype == value.dtype:
                try:
                    view = base.detach().as_strided(value.shape, [int(s) for s in alias[1]], int(alias[2]))
                    if torch.equal(view, value) or torch.equal(view.isnan(), value.isnan()) and torch.equal(
                            view.nan_to_num(0), value.nan_to_num(0)):  # a view only if the values agree
                        value = view
                except (RuntimeError, TypeError, ValueError):
                    pass
        if d.get("id") is None:
            return value
        if d.get("bridge") and torch.is_grad_enabled():  # an output with a graph in the sandbox
            anchor = torch.zeros((), requires_grad=True)  # so that it requires grad here too
            return _Bridge.apply(self, int(d["id"]), value, anchor, *self.call_inputs)
        m = value.as_subclass(Mirror)
        if d.get("param") and d.get("rg"):
            m.requires_grad_(True)
        if "grad" in d:
            m.grad = self.mirror(d["grad"], buffers)
        m._link = (self, int(d["id"]))
        if "ptr" in d:
            m._ptr = (int(d["ptr"][0]), int(d["ptr"][1]))
        weakref.finalize(m, self.released.append, int(d["id"]))
        return m

    # the pickle that goes to the sandbox
    def dumps(self, obj) -> bytes:
        grader = self
        self.call_inputs, self.sent_now = [], set()

        class P(pickle.Pickler):
            def persistent_id(self, x):
                if type(x) in _PLAIN:  # most of what a pickle holds: nothing to decide
                    return None
                if isinstance(x, Remote):
                    return ("R", object.__getattribute__(x, "_id"))
                if isinstance(x, torch.Tensor):
                    lid = getattr(x, "_bridge_lid", None)
                    if lid is None or grader.sent.get(lid) is not x:
                        lid = grader.new_lid()
                        grader.sent[lid] = x
                        try:
                            x._bridge_lid = lid
                        except Exception:
                            pass
                    grader.sent_now.add(lid)
                    if x.requires_grad and x.is_floating_point() and all(x is not t for t in grader.call_inputs):
                        grader.call_inputs.append(x)
                    return ("T", lid, str(x.dtype).removeprefix("torch."), list(x.shape), _tensor_bytes(x),
                            (list(x.stride()), x.storage_offset()), bool(x.requires_grad),
                            isinstance(x, torch.nn.Parameter),
                            None if not x.is_leaf or x.grad is None else (str(x.grad.dtype).removeprefix("torch."),
                                                         list(x.grad.shape), _tensor_bytes(x.grad)))
                if _local_only(x):
                    lid = grader.new_lid()
                    grader.locals[lid] = x
                    return ("L", lid, callable(x))
                return None

        f = io.BytesIO()
        P(f, protocol=5).dump(obj)
        return f.getvalue()

    # one request, serving the sandbox's callbacks while it runs
    def request(self, op: str, *args):
        # A check reads the same attributes again and again (layer.attn.w_q.weight, ...): answer those
        # from what the sandbox said since its objects last had a chance to change. A learner whose
        # attribute reads have side effects only changes what its own code sees.
        if op == "getattr" and (args[0], args[1]) in self.read:
            return self.read[args[0], args[1]]
        if op not in _READS:
            self.read.clear()
        value = self._request(op, *args)
        if op == "getattr":
            self.read[args[0], args[1]] = value
        return value

    def _request(self, op: str, *args):
        released, self.released = self.released, []
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            raise BridgeError("no time is left for this check")
        _send(self.sock, self.dumps((op, args, {**_state(), "left": left}, released)))
        inputs, sent = self.call_inputs, self.sent_now  # what this request sent (gradients, write-backs)
        while True:
            if self.deadline is not None:  # the sandbox stops the learner's code in time; this is in case it doesn't
                self.sock.settimeout(max(0.1, self.deadline - time.monotonic() + 10))
            try:
                header, buffers = _unpack(_recv(self.sock))
            except socket.timeout:
                raise BridgeError("the sandbox stopped answering") from None
            except (OSError, ValueError, struct.error, RecursionError) as e:
                raise BridgeError(f"the sandbox's answer could not be read: {type(e).__name__}") from None
            if self.deadline is not None and time.monotonic() > self.deadline + 10:
                raise BridgeError("the sandbox kept the grader busy past the time limit")
            try:
                if header.get("k") == "callback":
                    self._serve(header, buffers)
                    continue
                rng = decode(header["state"], buffers, self)
                if isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape:
                    torch.set_rng_state(rng)
                for lid, value, grad in decode(header.get("written", []), buffers, self):
                    if int(lid) in sent:  # only what this request sent can have been changed by it
                        self._write_back(lid, value, grad)
                kind = header.get("k")
                self.call_inputs = inputs
                value = decode(header["v"], buffers, self) if kind == "ok" else None
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise BridgeError(f"the sandbox's answer is malformed: {type(e).__name__}") from None
            if kind == "ok":
                return value
            if kind == "error":
                raise _exception(header["e"] if isinstance(header.get("e"), dict) else {})
            raise BridgeError(f"unexpected message {kind!r}")

    def _write_back(self, lid, value, grad):
        t = self.sent.get(int(lid))
        if t is None:
            return
        with torch.no_grad():
            if value is not None and value.shape == t.shape:
                torch.Tensor.copy_(t, value.as_subclass(torch.Tensor))
            if grad is not False:
                t.grad = None if grad is None else grad.as_subclass(torch.Tensor).to(t.dtype)

    def _serve(self, header, buffers):
        """The sandbox calls one of the check's own functions (a lambda, a model defined in the check)."""
        try:
            target = self.locals[int(header["id"])]
            op = header["op"]
            if op == "call":
                args, kwargs = decode(header["a"], buffers, self)
                args, kwargs = list(args), dict(kwargs)
                value = target(*args, **kwargs)
            elif op == "getattr" and not str(header["name"]).startswith("_"):
                value = getattr(target, str(header["name"]))
            else:
                raise PermissionError(f"the sandbox may not {op} the grader's objects")
            reply = ("reply", "ok", value, _state())
        except Exception as e:
            reply = ("reply", "error", (type(e).__name__, str(e)), _state())
        _send(self.sock, self.dumps(reply))


_READS = {"getattr", "get", "len", "bool", "list"}  # requests that leave the sandbox's objects as they were
_PLAIN = {int, float, bool, str, bytes, tuple, list, dict, type(None), torch.dtype, torch.Size}


def _local_only(x) -> bool:
    """Objects that stay in the grader, called back: functions and classes pickle cannot name."""
    if isinstance(x, type):
        return "<locals>" in x.__qualname__ or x.__module__ == "__main__"
    if callable(x) and hasattr(x, "__qualname__") and hasattr(x, "__module__"):
        return "<locals>" in x.__qualname__ or "<lambda>" in x.__qualname__ or x.__module__ == "__main__"
    cls = type(x)
    return "<locals>" in cls.__qualname__ or (cls.__module__ == "__main__" and not isinstance(x, (list, dict, tuple)))


# --- the sandbox's side -------------------------------------------------------------------------

class TimeLimit(BaseException):
    """Raised in the learner's code when a request runs out of time (not an Exception: `except
    Exception` in the learner's code does not swallow it)."""


def _alarm(signum, frame):
    raise TimeLimit("it ran past the grader's time limit and was stopped")


class Sandbox:
    """The sandbox's end: serves the grader's requests on the notebook's objects."""

    def __init__(self, sock: socket.socket, namespace: dict, run_cell=None):
        self.sock, self.ns, self.run_cell = sock, namespace, run_cell
        self.objects: dict[int, object] = {}
        self.ids: dict[int, int] = {}                # id(obj) -> hid
        self.received: dict[int, torch.Tensor] = {}  # lid -> the tensor the grader sent
        self.storages: dict[int, int] = {}           # storage address -> lid
        self.got: list = []                          # the tensors of the request being read
        self.outputs: dict[int, list] = {}           # hid of an output with a graph -> the inputs it may reach
        self.next, self.depth, self.pid = 0, 0, os.getpid()

    def keep(self, x) -> int:
        """A handle for x: one per object, except tensors, whose every copy in the grader has its own."""
        hid = self.ids.get(id(x))
        if hid is not None and self.objects.get(hid) is x and not isinstance(x, torch.Tensor):
            return hid
        self.next += 1
        self.objects[self.next], self.ids[id(x)] = x, self.next
        if isinstance(x, torch.Tensor) and x.grad_fn is not None:
            self.outputs[self.next] = [t for t in self.got if t._bridge_rg]
        return self.next

    def local_id(self, x):
        if type(x) is GraderObject:
            return x._grader_lid
        lid = getattr(x, "_bridge_lid", None) if isinstance(x, torch.Tensor) else None
        return lid if lid is not None and self.received.get(lid) is x else None

    def alias_of(self, t: torch.Tensor):
        lid = self.storages.get(t.untyped_storage().data_ptr()) if t.numel() else None
        if lid is None or self.received.get(lid) is t:
            return None
        return [lid, list(t.stride()), int(t.storage_offset())]

    def loads(self, payload: bytes):
        sandbox = self

        class U(pickle.Unpickler):
            def persistent_load(self, pid):
                if pid[0] == "R":
                    return sandbox.objects[pid[1]]
                if pid[0] == "L":
                    return GraderObject(sandbox, pid[1])
                if pid[0] != "T":
                    raise pickle.UnpicklingError("unknown reference")
                _, lid, dtype, shape, data, layout, rg, param, grad = pid
                value = _laid_out(_tensor_from(dtype, shape, data), *layout)
                t = sandbox.received.get(lid)
                if t is None or t.shape != value.shape or t.dtype != value.dtype:
                    rg = rg and value.is_floating_point()
                    t = torch.nn.Parameter(value, requires_grad=rg) if param else value.requires_grad_(rg)
                    t._bridge_lid = lid
                    sandbox.received[lid] = t
                    if t.numel():
                        sandbox.storages[t.untyped_storage().data_ptr()] = lid
                else:  # sent again: the grader's current values
                    with torch.no_grad():
                        t.copy_(value)
                t._bridge_rg = bool(rg and value.is_floating_point())
                t.grad = None if grad is None else _tensor_from(*grad)
                if all(t is not u for u in sandbox.got):
                    sandbox.got.append(t)
                return t

        return U(io.BytesIO(payload)).load()

    def answer(self, kind: str, value=None, error=None, watched=()):
        enc = Encoder(self)
        header = {"k": kind}
        if kind == "ok":
            header["v"] = enc(value)
        else:
            header["e"] = error
        header["state"] = enc.tensor(torch.get_rng_state(), None)
        written = []
        for t, version, grad, grad_version in watched:  # what the learner's code changed in place
            changed = t._version != version
            grad_changed = t.grad is not grad or (grad is not None and t.grad._version != grad_version)
            if changed or grad_changed:
                written.append({"t": "list", "v": [
                    t._bridge_lid, enc.tensor(t.detach(), None) if changed else None,
                    (None if t.grad is None else enc.tensor(t.grad, None)) if grad_changed else False]})
        header["written"] = {"t": "list", "v": written}
        _send(self.sock, _pack(header, enc.buffers))

    def serve(self, until_reply: bool = False):
        """Serve the grader's requests; with until_reply, return its reply to our callback instead."""
        while True:
            saved, self.got = self.got, []
            msg = self.loads(_recv(self.sock))
            if msg[0] == "reply":
                self.got = saved
                _, kind, value, state = msg
                _set_state(state)
                if kind == "error":
                    raise RuntimeError(f"the grader's {value[0]}: {value[1]}")
                return value
            op, args, state, released = msg
            for hid in released:
                obj = self.objects.pop(hid, None)
                self.outputs.pop(hid, None)
                if obj is not None and self.ids.get(id(obj)) == hid:
                    del self.ids[id(obj)]
            _set_state(state)
            watched = [(t, t._version, t.grad, None if t.grad is None else t.grad._version) for t in self.got]
            self.depth += 1
            if self.depth == 1 and state.get("left"):
                signal.setitimer(signal.ITIMER_REAL, max(0.01, state["left"]))
            try:
                value = self.handle(op, args)
                signal.setitimer(signal.ITIMER_REAL, 0) if self.depth == 1 else None
            except BaseException as e:  # noqa: B036 -- whatever it is, the grader hears of it
                if os.getpid() != self.pid:  # a child the learner's code forked: the answer is its parent's
                    os._exit(0)
                if self.depth == 1:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self.depth -= 1
                if op == "exit":
                    raise
                self.answer("error", error=describe_exception(e), watched=watched)
            else:
                if os.getpid() != self.pid:
                    os._exit(0)
                self.depth -= 1
                self.answer("ok", value, watched=watched)
            self.got = saved

    def handle(self, op: str, args):
        if op == "cell":
            return self.run_cell(*args)
        if op == "get":
            return self.ns[args[0]]
        if op == "exit":
            raise SystemExit(0)
        if op == "run":  # one of the course's helpers, run here beside the learner's code
            module, qualname, a, kw = args
            fn = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
            return fn(*a, **kw)
        if op == "backward":
            hid, grad = args  # the graph goes with the backward (retain_graph=False), and so does the output
            out, inputs = self.objects.pop(hid), self.outputs.pop(hid, [])
            before = [None if t.grad is None else t.grad.clone() for t in inputs]
            out.backward(grad)
            grads = []
            for t, b in zip(inputs, before):
                g = t.grad if b is None or t.grad is None else t.grad - b
                grads.append(None if g is None else g.detach().clone())
            return grads
        obj = self.objects[args[0]]
        if op == "call":
            return obj(*args[1], **args[2])
        if op == "getattr":
            return getattr(obj, args[1])
        if op == "setattr":
            return setattr(obj, args[1], args[2])
        if op == "getitem":
            return obj[args[1]]
        if op == "setitem":
            obj[args[1]] = args[2]
            return None
        if op == "len":
            return len(obj)
        if op == "bool":
            return bool(obj)
        if op == "list":
            return list(obj)
        if op in ("copy", "deepcopy"):
            import copy
            return getattr(copy, op)(obj)
        if op == "inplace":
            with torch.no_grad() if obj.is_leaf and obj.requires_grad else contextlib.nullcontext():
                getattr(obj, args[1])(*args[2], **args[3])
            return obj.detach().clone()
        raise ValueError(f"unknown request {op!r}")


def _laid_out(value: torch.Tensor, stride, offset) -> torch.Tensor:
    """value with the grader's strides and storage offset: a transposed view stays one (checks give
    non-contiguous inputs on purpose), and views of it line up with the grader's tensor."""
    if list(value.stride()) == list(stride) and offset == 0:
        return value
    try:
        extent = offset + 1 + sum((n - 1) * s for n, s in zip(value.shape, stride) if n > 0)
        out = torch.zeros(extent if value.numel() else 0, dtype=value.dtype).as_strided(value.shape, stride, offset)
        out.copy_(value)
        return out
    except RuntimeError:  # overlapping strides (expand): contiguous it is
        return value


class GraderObject:
    """In the sandbox: one of the check's own objects (a lambda, a model it defined), called back."""

    def __init__(self, sandbox, lid):
        self._sandbox, self._grader_lid = sandbox, lid

    def __call__(self, *args, **kwargs):
        return self._ask({"op": "call"}, (list(args), dict(kwargs)))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ask({"op": "getattr", "name": name})

    def _ask(self, header, args=None):
        enc = Encoder(self._sandbox)
        header = {"k": "callback", "id": self._grader_lid, **header}
        if args is not None:
            header["a"] = enc(args)
        _send(self._sandbox.sock, _pack(header, enc.buffers))
        return self._sandbox.serve(until_reply=True)


def describe_exception(e: BaseException) -> dict:
    """An exception as the grader may see it: its type's name, its message, the learner's line."""
    where = ""
    try:
        from transformer_course.checks import _where
        where = _where(e.__traceback__)
    except Exception:
        pass
    try:
        msg = str(e)
    except Exception:
        msg = "(its message could not be read)"
    return {"type": type(e).__name__, "msg": msg[:4000], "where": where}


def loopback(namespace: dict) -> Grader:
    """Both ends in this process (the sandbox's in a thread): the tests use it to put every check's
    cases through the bridge without a sandbox."""
    import threading

    ours, theirs = socket.socketpair()

    def serve():
        try:
            Sandbox(theirs, namespace).serve()
        except BridgeError:  # the grader's end closed
            pass

    threading.Thread(target=serve, daemon=True).start()
    return Grader(ours)
