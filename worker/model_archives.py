"""Static checks of uploaded model archives, run before torch ever reads them."""

# Why: torch's own loaders are not safe on hostile files. torch.export.load
# unpickles weights and sample inputs with weights_only=False as a fallback,
# unpickles "opaque" constants with plain pickle.loads, loads AOTInductor shared
# libraries, evaluates symbolic shapes with sympy.sympify (that is, eval), execs
# its guard code, and runs any ATen operator a graph names (aten::save writes
# files, aten::from_file reads them). TorchScript code can call the same ops.
# These checks accept what torch.export.save and torch.jit.save write for
# ordinary models and refuse everything else; they import no torch, read the
# zip directory and small members only, and never unpickle anything.

from __future__ import annotations

import io
import json
import pickletools
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast


class ArchiveError(ValueError):
    """An archive that ShiftScore refuses to hand to torch; the message is for the user."""


def open_zip(source: Path | BinaryIO, what: str) -> zipfile.ZipFile:
    """Open a zip archive whose every member torch and Python read alike, or raise ArchiveError."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveError(f"the file is not {what} (not a readable zip archive: {exc})") from exc
    try:
        check_members(archive)
    except BaseException:
        archive.close()
        raise
    return archive


# Why: torch reads archives with miniz, these checks with Python's zipfile, and
# the two disagree on ambiguous archives. miniz looks names up ignoring ASCII
# case and takes the first of two equal names; zipfile keeps the last and
# matches case exactly; miniz trusts the directory's offsets where zipfile
# corrects them for data prepended to the archive. torch.jit.save,
# torch.export.save and torch.save write none of these ambiguities, so any one
# of them is refused rather than resolved.
_END = b"PK\x05\x06"
_END64_LOCATOR = b"PK\x06\x07"
_END64 = b"PK\x06\x06"
_LOCAL = b"PK\x03\x04"
_NOT_PLAIN = " (torch's and Python's zip readers could see different files; write it again with torch)"
_MISPLACED = f"the archive's directory is not where or what its end record says{_NOT_PLAIN}"


def check_members(archive: zipfile.ZipFile) -> None:
    """Refuse repeated or case-folded member names, odd names, and a directory that disagrees with the members."""
    seen: dict[str, str] = {}
    for info in archive.infolist():
        name = info.orig_filename
        if not name.isascii() or not name.isprintable() or "\\" in name:
            raise ArchiveError(f"the archive member name {name[:100]!r} is not plain printable ASCII{_NOT_PLAIN}")
        other = seen.get(name.lower())
        if other == name:
            raise ArchiveError(f"the archive holds the member {name[:200]!r} more than once{_NOT_PLAIN}")
        if other is not None:
            raise ArchiveError(
                f"the archive members {other[:200]!r} and {name[:200]!r} differ only by letter case{_NOT_PLAIN}"
            )
        seen[name.lower()] = name
    # zipfile seeks before every read of its own, so these reads may share its file.
    file = cast(BinaryIO, archive.fp)
    _check_directory(file, archive)
    _check_local_headers(file, archive)


def _check_directory(file: BinaryIO, archive: zipfile.ZipFile) -> None:
    """Refuse an archive whose end record is not last, or whose directory is not where and what it says."""
    file.seek(0, io.SEEK_END)
    size = file.tell()
    file.seek(max(0, size - 22))
    end = file.read(22)
    # A comment or trailing bytes would let each reader pick a different end record.
    if len(end) != 22 or end[:4] != _END or end[20:22] != b"\0\0":
        raise ArchiveError(f"the archive does not end with its directory record{_NOT_PLAIN}")
    count, offset = int.from_bytes(end[10:12], "little"), int.from_bytes(end[16:20], "little")
    file.seek(max(0, size - 42))
    locator = file.read(20)
    if locator[:4] == _END64_LOCATOR:
        file.seek(int.from_bytes(locator[8:16], "little"))
        record = file.read(56)
        if record[:4] != _END64:
            raise ArchiveError(_MISPLACED)
        count64, offset64 = int.from_bytes(record[32:40], "little"), int.from_bytes(record[48:56], "little")
        if count not in (0xFFFF, count64) or offset not in (0xFFFFFFFF, offset64):
            raise ArchiveError(_MISPLACED)
        count, offset = count64, offset64
    # zipfile reads entries until the directory's size is used up, miniz reads `count` of them; zipfile
    # shifts every offset by the bytes in front of the archive, miniz does not.
    if count != len(archive.infolist()) or offset != archive.start_dir:
        raise ArchiveError(_MISPLACED)


def _check_local_headers(file: BinaryIO, archive: zipfile.ZipFile) -> None:
    """Refuse members whose local header names another file, or whose bytes overlap another member's."""
    spans = []
    for info in archive.infolist():
        file.seek(info.header_offset)
        header = file.read(30)
        name_length = int.from_bytes(header[26:28], "little")
        extra_length = int.from_bytes(header[28:30], "little")
        local_name = file.read(name_length)
        if (len(header) != 30 or header[:4] != _LOCAL or local_name != info.orig_filename.encode("ascii")
                or int.from_bytes(header[8:10], "little") != info.compress_type):
            raise ArchiveError(
                f"the archive member {info.orig_filename[:200]!r} does not match its local header{_NOT_PLAIN}"
            )
        spans.append((info.header_offset, info.header_offset + 30 + name_length + extra_length + info.compress_size))
    spans.sort()
    ends = [0] + [stop for _, stop in spans]
    if any(start < previous for (start, _), previous in zip(spans, ends)) or ends[-1] > archive.start_dir:
        raise ArchiveError(f"the archive's members overlap one another or its directory{_NOT_PLAIN}")
    if spans and spans[0][0] != 0:
        raise ArchiveError(f"the archive has data in front of its first member{_NOT_PLAIN}")


def archive_root(names: list[str], what: str) -> str:
    """Return the single top-level folder every member lives in (torch's archive layout)."""
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ArchiveError(f"the file is not {what}: its members are not all inside one top-level folder")
    return roots.pop()


# Members we read into memory (pickles, code, JSON) are small in real archives;
# the cap keeps a zip bomb from exhausting the worker's memory.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """Read one archive member that we inspect, refusing implausibly large ones."""
    if archive.getinfo(name).file_size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"the archive member {name!r} is too large to be model structure")
    return archive.read(name)


def _resolve_globals(data: bytes) -> Iterator[tuple[str, str]]:
    """Yield (module, name) of every global a pickle imports, without unpickling it."""
    # Track the values string-pushing opcodes leave on the stack (and in the
    # memo) so STACK_GLOBAL's operands can be resolved statically; anything we
    # cannot resolve is reported as unresolvable rather than trusted.
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in {"GLOBAL", "INST"}:
            module, _, attr = str(arg).partition(" ")
            yield module, attr
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            if module is None or attr is None:
                yield "<unresolvable>", "<unresolvable>"
            else:
                yield module, attr
            recent.append(None)
        elif name in {"EXT1", "EXT2", "EXT4"}:
            yield "<copyreg extension>", str(arg)
        elif name in {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                      "SHORT_BINSTRING"}:
            recent.append(str(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            memo[int(arg)] = recent[-1] if recent else None
        elif name in {"GET", "BINGET", "LONG_BINGET"}:
            recent.append(memo.get(int(arg)))
        elif name not in {"PROTO", "FRAME"}:
            recent.append(None)


def check_pickle(data: bytes, allowed: Callable[[str, str], bool], member: str) -> None:
    """Raise ArchiveError if the pickle `data` imports a global `allowed` rejects, or is malformed."""
    try:
        for module, name in _resolve_globals(data):
            if not allowed(module, name):
                raise ArchiveError(
                    f"the archive member {member!r} refers to the Python object {module}.{name}; "
                    "ShiftScore loads tensors and model structure only, never arbitrary objects"
                )
    except ArchiveError:
        raise
    except Exception as exc:  # pickletools raises a mix of ValueError, KeyError, ...
        raise ArchiveError(f"the archive member {member!r} is not a valid pickle ({exc})") from exc


_TORCHSCRIPT_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch.jit._pickle", "build_intlist"),
    ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"),
    ("torch.jit._pickle", "build_tensor_from_id"),
    ("torch.jit._pickle", "restore_type_tag"),
}


def _torchscript_global(module: str, name: str) -> bool:
    """Whether a global may appear in a TorchScript pickle (TorchScript classes, tensors, storages)."""
    if module == "__torch__" or module.startswith("__torch__."):
        return True
    if module == "torch" and name.endswith("Storage"):
        return True
    return (module, name) in _TORCHSCRIPT_GLOBALS


# TorchScript ops that touch the file system; no image model needs them at load or run time.
# Why a bare word anywhere, strings and comments included: a pattern that knows
# where a call starts (`save(`) falls to a comment or a line break between the
# name and its bracket, and only TorchScript's own lexer knows for sure where a
# comment or a string ends. Generated TorchScript holds no comments, and no
# image model names these words, so matching them everywhere costs nothing.
_TORCHSCRIPT_FILE_OPS = re.compile(r"(?<![A-Za-z0-9_])(save|from_file|load_tensor|_load_for_mobile)(?![A-Za-z0-9_])",
                                   re.IGNORECASE)


def check_torchscript(path: Path) -> None:
    """Refuse a TorchScript archive with foreign pickled objects or file-system ops in its code."""
    what = "a TorchScript archive (written by torch.jit.save)"
    with open_zip(path, what) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        root = archive_root(names, what)
        # torch finds members whatever their letter case (open_zip made names unique ignoring it).
        lowered = {name: name.lower() for name in names}
        code = f"{root}/code/".lower()
        if f"{root}/data.pkl".lower() not in lowered.values() or not any(n.startswith(code) for n in lowered.values()):
            raise ArchiveError(
                f"the file is not {what}: it has no data.pkl and code/ folder "
                "(a torch.save checkpoint needs format 'state_dict')"
            )
        for name, lower in lowered.items():
            if lower.endswith((".pkl", ".debug_pkl")):
                check_pickle(read_member(archive, name), _torchscript_global, name)
            elif lower.startswith(code):
                _check_torchscript_code(read_member(archive, name), name)


def _check_torchscript_code(data: bytes, name: str) -> None:
    """Refuse TorchScript source that names a file-system op."""
    try:
        # NFKC: Python folds compatibility characters in names (a fullwidth ｓ is an s).
        code = unicodedata.normalize("NFKC", data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"the archive member {name!r} is not TorchScript source") from exc
    match = _TORCHSCRIPT_FILE_OPS.search(code)
    if match:
        raise ArchiveError(
            f"the TorchScript code in {name!r} names {match.group(1)}(), an operation that reads or writes "
            "files; ShiftScore refuses models that touch the file system"
        )


_PT2_MEMBER = re.compile(
    r"""(?x)
    archive_format | archive_version | byteorder | \.data/version | \.data/serialization_id
    | models/[\w.-]+\.json
    | data/weights/(weight_\d+ | [\w.-]+_weights_config\.json)
    | data/constants/(tensor_\d+ | [\w.-]+_constants_config\.json)
    | data/sample_inputs/[\w.-]+\.pt
    | extra/[^/].*
    """
)

# Node targets the deserializer may resolve: tensor ops and plain arithmetic on sizes.
_OPERATOR = re.compile(
    r"""(?x)
    torch\.ops\.(aten|prims)\.(?P<op>\w+)\.\w+
    | _operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|abs|eq|ne|lt|le|gt|ge|and_|or_|not_)
    | torch\.(sym_float|sym_int|sym_max|sym_min|sym_not|sym_ite|sym_sqrt|sym_sum|_sym_sqrt)
    | math\.(ceil|floor|trunc|sqrt)
    """
)
_FILE_OPS = {"save", "from_file"}

# Names a symbolic-shape expression or guard may use: sympy's printed classes and
# assumptions, torch's sympy functions, and the size accessors of guard code.
_EXPRESSION_NAMES = frozenset(
    """
    Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge And Or Not
    Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan Piecewise ExprCondPair
    true false True False None oo zoo nan Infinity NegativeInfinity Zero One NegativeOne Half
    floor ceiling FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv
    LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator
    TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
    positive negative nonnegative nonpositive integer real finite zero nonzero even odd rational
    commutative L and or not inf min max abs round math torch cast_symbool_to_symint_guardless
    """.split()
)
# Attributes guard code may read: tensor sizes, and the math / torch.sym_* functions torch's printer emits.
_EXPRESSION_ATTRIBUTES = frozenset(
    """
    size stride storage_offset dim floor ceil trunc sqrt inf nan cos cosh acos sin sinh asin tan tanh atan
    log2 sym_float sym_int sym_max sym_min sym_not sym_ite _sym_sqrt
    """.split()
)
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
_EXPRESSION_TOKEN = re.compile(
    r"""(?x)
    (?P<space>[ ]+)
    | (?P<number>\d+(\.\d+)?(e[+-]?\d+)?)
    | (?P<string>'[A-Za-z_][A-Za-z0-9_]*')
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|//|<<|>>|[-+*/%<>(),=\[\]~&|^.])
    """
)


def check_expression(text: str, where: str) -> None:
    """Refuse a symbolic expression or guard that is more than arithmetic on sizes and symbols."""
    problem = _expression_problem(text)
    if problem:
        raise ArchiveError(
            f"the exported program's {where} {text[:80]!r} {problem}; "
            "ShiftScore accepts only archives written by torch.export.save"
        )


def _expression_problem(text: str) -> str | None:
    """Return why `text` is not a plain expression, or None."""
    if not isinstance(text, str) or len(text) > 2000 or "**" in text:
        return "is not a plain arithmetic expression"
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _EXPRESSION_TOKEN.match(text, position)
        if not match:
            return f"contains {text[position]!r}"
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    depth = 0
    for index, (kind, token) in enumerate(tokens):
        after_dot = index > 0 and tokens[index - 1][1] == "."
        if token == "." and (index + 1 == len(tokens) or tokens[index + 1][0] != "name"):
            return "accesses an attribute"
        if kind == "name" and after_dot and token not in _EXPRESSION_ATTRIBUTES:
            return f"accesses the attribute {token!r}"
        if kind == "name" and not after_dot and token not in _EXPRESSION_NAMES and not _SYMBOL.fullmatch(token):
            return f"uses the name {token!r}"
        depth += {"(": 1, ")": -1, "[": 1, "]": -1}.get(token, 0) if kind == "op" else 0
        if depth < 0:
            return "has unbalanced brackets"
    return "has unbalanced brackets" if depth else None


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Yield every (key, value) pair in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def check_program(program: Any, member: str) -> None:
    """Refuse a serialized exported program whose operators, expressions or guards are not plain."""
    if not isinstance(program, dict):
        raise ArchiveError(f"the archive member {member!r} is not an exported program")
    for key, value in _walk(program):
        if key in {"target", "as_operator"}:
            match = _OPERATOR.fullmatch(value) if isinstance(value, str) else None
            if not match or match.group("op") in _FILE_OPS:
                raise ArchiveError(
                    f"the exported program calls {str(value)[:80]!r}; ShiftScore runs only ATen tensor "
                    "operators and size arithmetic"
                )
        elif key == "expr_str":
            check_expression(value, "symbolic shape")
    constraints = program.get("range_constraints") or {}
    if not isinstance(constraints, dict) or not all(_SYMBOL.fullmatch(str(k)) for k in constraints):
        raise ArchiveError("the exported program's range constraints name something other than shape symbols")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        raise ArchiveError("the exported program's guards are not a list")
    for guard in guards:
        check_expression(guard, "guard")


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"),
    ("torch", "device"),
}


def _tensor_global(module: str, name: str) -> bool:
    """Whether a global may appear in a torch.save pickle of plain tensors."""
    return (module == "torch" and name.endswith("Storage")) or (module, name) in _TENSOR_GLOBALS


def _check_tensor_file(data: bytes, member: str) -> None:
    """Refuse an embedded torch.save file whose pickles hold anything but tensors."""
    with open_zip(io.BytesIO(data), f"a torch.save zip file (the archive member {member!r})") as inner:
        for name in inner.namelist():
            if name.endswith(".pkl"):
                check_pickle(read_member(inner, name), _tensor_global, f"{member}:{name}")


def _check_payload_config(data: bytes, member: str, file_pattern: str) -> None:
    """Refuse a weights/constants config that points at pickled or non-tensor payloads."""
    try:
        config = json.loads(data)["config"]
        entries = list(config.values())
    except Exception as exc:
        raise ArchiveError(f"the archive member {member!r} is not a valid payload config") from exc
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use_pickle") or not re.fullmatch(
            file_pattern, str(entry.get("path_name"))
        ):
            raise ArchiveError(
                f"the archive member {member!r} stores a pickled or non-tensor object; "
                "ShiftScore loads plain tensors only"
            )


def check_exported(path: Path) -> None:
    """Refuse a .pt2 archive that holds anything beyond a plain exported program and tensors."""
    what = "a torch.export archive (.pt2, written by torch.export.save)"
    with open_zip(path, what) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        root = archive_root(names, what)
        relative = [name[len(root) + 1 :] for name in names]
        for name in relative:
            if not _PT2_MEMBER.fullmatch(name):
                raise ArchiveError(
                    f"the .pt2 archive contains {name!r}, which ShiftScore does not load "
                    "(only programs and plain tensors, as torch.export.save writes them; "
                    "no compiled AOTInductor code, pickled objects or legacy layouts)"
                )
        models = [name for name in relative if name.startswith("models/")]
        if not models or "archive_version" not in relative:
            raise ArchiveError(f"the file is not {what}: it has no models/ folder or archive_version")
        for name in relative:
            full = f"{root}/{name}"
            if name.endswith("_weights_config.json"):
                _check_payload_config(read_member(archive, full), name, r"weight_\d+")
            elif name.endswith("_constants_config.json"):
                _check_payload_config(read_member(archive, full), name, r"tensor_\d+")
            elif name.startswith("data/sample_inputs/"):
                _check_tensor_file(read_member(archive, full), name)
            elif name.startswith("models/"):
                try:
                    program = json.loads(read_member(archive, full))
                except Exception as exc:
                    raise ArchiveError(f"the archive member {name!r} is not valid JSON") from exc
                check_program(program, name)


def check_checkpoint(path: Path) -> None:
    """Refuse a torch.save zip checkpoint that torch and Python's zipfile could read differently."""
    # torch's weights-only unpickler guards the contents; this guards which bytes it is given.
    open_zip(path, "a torch.save checkpoint").close()
