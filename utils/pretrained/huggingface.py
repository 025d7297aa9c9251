"""OpenAI's GPT-2 weights from Hugging Face into GPTModel, and GPTModel back out to HF.

Loading streams: tensors are read one at a time (safetensors `safe_open`, or a `.bin`
memory-mapped with `weights_only=True`), converted (`mapping.iter_converted`: transpose the
Conv1D weights, split c_attn into Q/K/V) and assigned into a GPTModel built on the meta
device. So the machine never holds two full models and never spends time initialising
weights that are about to be overwritten; peak memory is the model plus one tensor.
Loading is strict: a missing, unexpected or wrong-shaped tensor is an error, never skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import pickle
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CorruptCheckpointError,
    InvalidWeightsError,
    UnsafeCheckpointError,
)
from utils.config import GPT2_CONFIGS, PRESET_ALIASES, ModelConfig
from utils.model import GPTModel, count_parameters, meta_skeleton
from utils.model.memory import check_memory
from utils.pretrained.foreign import hf_config_to_model_config
from utils.pretrained.foreign import infer_config as infer_foreign_config
from utils.pretrained.mapping import (
    WeightMappingError,
    convert_custom_to_hf,
    get_weight_mapping,
    is_ignored_hf_key,
    iter_converted,
    iter_custom_to_hf,
    normalize_hf_key,
    split_qkv_weight,
    to_hf_config,
    transpose,
)
from utils.reading import read_json_file, safetensors_header

HUB_REPOS = {"small": "openai-community/gpt2", "medium": "openai-community/gpt2-medium",
             "large": "openai-community/gpt2-large", "xl": "openai-community/gpt2-xl"}
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json",
             "model-*-of-*.safetensors"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# --------------------------------------------------------------------- locating files


def gpt2_size(name: str | Path) -> str | None:
    """The GPT-2 size ("small" ... "xl") `name` stands for (`gpt2`, `gpt2-medium`, `small`,
    in any case), or None: an existing path, or any other name, is not a size."""
    text = str(name).strip()
    size = PRESET_ALIASES.get(text.lower(), text.lower())
    return size if size in HUB_REPOS and not Path(text).exists() else None


def pretrained_model_config(name: str | Path) -> ModelConfig | None:
    """The shape of the weights `load_openai_gpt2(name)` loads, read without a tensor: a
    GPT-2 size's, or a local folder's or file's (config.json, else the tensor headers).
    None for a hub id: its shape is known once it is downloaded."""
    size = gpt2_size(name)
    if size is not None:
        return GPT2_CONFIGS[size]
    path = Path(name).expanduser()
    if not path.exists():
        return None
    files = resolve_weight_files(path)
    return read_hf_config(files[0].parent) or infer_config(hf_tensor_shapes(files))


def _is_local_reference(name: str) -> bool:
    return os.sep in name or name.startswith(".") or name.endswith(WEIGHT_SUFFIXES)


def resolve_weight_files(model_name_or_path: str | Path) -> list[Path]:
    """The weight file(s) for a hub name (downloaded once, then cached by huggingface_hub),
    a `save_pretrained` folder, or a single `.safetensors` / `.bin` file."""
    path = Path(model_name_or_path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _weight_files_in_folder(path)
    name = str(model_name_or_path)
    if _is_local_reference(name):
        raise FileNotFoundError(f"{name} does not exist; give a save_pretrained folder, a "
                                ".safetensors/.bin file, or a hub name such as 'gpt2'")
    return _weight_files_in_folder(download_from_hub(name))


def _weight_files_in_folder(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = _shard_names(index)
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise FileNotFoundError(f"{folder} lacks shard(s) {missing} named in {index_name}")
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).exists():
            return [folder / single]
    raise FileNotFoundError(
        f"no model.safetensors or pytorch_model.bin in {folder}; save the model there with "
        "`save_pretrained` or `export_to_hf`"
    )


def _shard_names(index: Path) -> list[str]:
    """The shard files an index names; read only as a small regular JSON file (a FIFO or a
    link to /dev/zero cannot hang or fill memory), each a plain name in the same folder."""
    data = read_json_file(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(name, str) and name and Path(name).name == name
            for name in weight_map.values()):
        raise CorruptCheckpointError(
            f"{index} is not a usable shard index (a small JSON file whose weight_map names "
            "shard files in the same folder). Fix: save or download the model again.")
    return sorted(set(weight_map.values()))


def download_from_hub(name: str) -> Path:
    """Fetch GPT-2's config and safetensors weights from the Hugging Face hub (network)."""
    from huggingface_hub import snapshot_download

    size = PRESET_ALIASES.get(name, name)
    repo_id = HUB_REPOS.get(size, name)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, auth: all mean "no weights from the hub"
        raise FileNotFoundError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
            f"{error}); check the name and the network, or pass a local save_pretrained folder"
        ) from error


# ------------------------------------------------------------------- reading tensors


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _unpooled_empty(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor in its own anonymous memory map, given back to the OS as soon as the
    tensor is freed. A short-lived buffer from malloc would stay in a heap arena between
    the model's weights and fragment it (hundreds of MB for gpt2-large)."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    region = mmap.mmap(-1, count * torch.empty((), dtype=dtype).element_size())
    return torch.frombuffer(region, dtype=dtype, count=count).view(shape)


def iter_safetensors(file: Path, temporary: Callable[[str], bool] | None = None
                     ) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a .safetensors file in file order, each read straight into its own memory.

    Plain sequential reads instead of safetensors' memory map: the tensors then own their
    memory (no parameter stays backed by the file) and the mapped file's pages are not
    added on top of the model's, which keeps peak memory at the model plus one tensor.
    Tensors for which `temporary(name)` is true (the caller copies them, e.g. to transpose)
    get memory that goes back to the OS when they are dropped.
    """
    start, header = safetensors_header(file)
    with open(file, "rb", buffering=0) as handle:
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise CorruptCheckpointError(f"{file}: tensor {name} has unsupported dtype "
                                             f"{info['dtype']}")
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            tensor = (_unpooled_empty(info["shape"], dtype) if temporary and temporary(name)
                      else torch.empty(info["shape"], dtype=dtype))
            begin, end = info["data_offsets"]
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            if end - begin != len(buffer):
                raise CorruptCheckpointError(f"{file}: tensor {name} has {end - begin} bytes for "
                                             f"shape {info['shape']}; the file is corrupt")
            handle.seek(start + begin)
            filled = 0
            while filled < len(buffer):
                count = handle.readinto(buffer[filled:])
                if not count:
                    raise CorruptCheckpointError(f"{file} is truncated inside tensor {name}; "
                                                 "download or export it again")
                filled += count
            yield name, tensor


def _read_all(files: Iterable[Path], temporary: Callable[[str], bool] | None
              ) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        tensors = (iter_safetensors(file, temporary) if file.suffix == ".safetensors"
                   else _load_torch_file(file).items())
        for name, tensor in tensors:
            check_weight(file, name, tensor)
            yield name, tensor


def check_weight(file: Path, name: str, tensor: torch.Tensor) -> None:
    """Refuse what `load` refuses: weights that are not floating point (a bool or int
    tensor would be cast quietly), stride-0 views (a small file posing as a big model) and
    NaN/Inf (a diverged or damaged model)."""
    if not tensor.is_floating_point() or tensor.element_size() < 2:
        raise InvalidWeightsError(
            f"{file}: tensor {name} has dtype {tensor.dtype}; GPT-2 weights are float32, "
            "float16, bfloat16 or float64. Fix: the file is not a GPT-2 model's weights; use "
            "another file.")
    if any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape,
                                                             strict=True)):
        raise InvalidWeightsError(
            f"{file}: tensor {name} of shape {list(tensor.shape)} repeats one stored value "
            "(a broadcast / stride-0 view, not real weights). Fix: use another file.")
    wide = torch.float32 if tensor.element_size() < 4 else None
    if not bool(torch.isfinite(tensor.sum(dtype=wide))) and not bool(
            torch.isfinite(tensor).all()):
        raise InvalidWeightsError(
            f"{file}: tensor {name} holds NaN or Inf values, so the converted model would be "
            "useless. Fix: get the weights again from where they came from.")


def iter_hf_tensors(files: Iterable[Path], prefetch: bool = True,
                    temporary: Callable[[str], bool] | None = None
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """`(key, tensor)` for every tensor of the files, one at a time.

    With `prefetch`, a background thread reads the next tensor while the caller converts
    the current one (file reads and torch copies both release the GIL), so reading and
    transposing overlap; at most two tensors are in flight besides the one being converted.
    """
    items = _read_all(files, temporary)
    return _prefetched(items) if prefetch else items


def copied_on_conversion(num_layers: int) -> Callable[[str], bool]:
    """Whether converting a HF tensor copies it (transposes, the c_attn split), so the
    tensor read from the file is only a temporary."""
    mapping = get_weight_mapping(num_layers)

    def temporary(key: str) -> bool:
        entry = mapping.get(normalize_hf_key(key))
        return entry is not None and entry[1] in (transpose, split_qkv_weight)

    return temporary


_DONE = object()


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            put(error)
        put(_DONE)

    worker = threading.Thread(target=produce, name="tensor-prefetch", daemon=True)
    worker.start()
    try:
        while (item := results.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # also when the consumer stops early: let the reader finish and close its file
        stop.set()
        worker.join()


def _load_torch_file(file: Path) -> dict[str, torch.Tensor]:
    # mmap: tensors are read from disk when touched, not all at once.
    # weights_only: a pickle that would run code is refused (seed 003 used weights_only=False).
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{file} holds objects other than tensors, and unpickling them could run code; "
            "refused. Convert it to .safetensors where it came from, or use a trusted source"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CorruptCheckpointError(f"cannot read {file} as a PyTorch state dict ({error}); "
                                     "download or save it again") from error
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{file} holds a {type(state).__name__}, not a state dict")
    return state


def hf_tensor_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor without reading any data (safetensors headers, mmap'd .bin)."""
    shapes = {}
    for file in files:
        if file.suffix == ".safetensors":
            _, header = safetensors_header(file)
            shapes.update({key: tuple(info["shape"]) for key, info in header.items()})
        else:
            shapes.update({k: tuple(v.shape) for k, v in _load_torch_file(file).items()})
    return shapes


# --------------------------------------------------------------------------- configs


def read_hf_config(folder: Path) -> ModelConfig | None:
    """ModelConfig from a HF `config.json` in `folder`, or None if there is none."""
    hf = read_json_file(folder / "config.json")
    return ModelConfig.from_dict(hf_config_to_model_config(hf)) if isinstance(hf, dict) else None


def infer_config(shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """ModelConfig from HF tensor shapes alone (`foreign.infer_config`'s rule)."""
    config, _ = infer_foreign_config(shapes, naming="huggingface")
    if config is None:
        raise ArchitectureMismatchError(
            "these weights match no GPT-2 size (width and depth), so the number of heads is "
            "unknown; put the model's config.json next to the weights"
        )
    return ModelConfig.from_dict(config)


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The HF GPT-2 tensor shapes a GPTModel with `config` needs (Conv1D weights [in, out]).

    Written out rather than derived from a meta-device model: the first meta-device
    operation in a process costs seconds (torch loads its Python decompositions).
    """
    if not config.use_attention_bias:
        raise ArchitectureMismatchError(
            "the model has use_attention_bias=False, but GPT-2's c_attn has a bias: loading "
            "it would drop the Q/K/V biases and give wrong logits; build the model with "
            "use_attention_bias=True (every GPT2_CONFIGS preset does)"
        )
    d = config.embedding_dimension
    block = {"ln_1.weight": (d,), "ln_1.bias": (d,), "attn.c_attn.weight": (d, 3 * d),
             "attn.c_attn.bias": (3 * d,), "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
             "ln_2.weight": (d,), "ln_2.bias": (d,), "mlp.c_fc.weight": (d, 4 * d),
             "mlp.c_fc.bias": (4 * d,), "mlp.c_proj.weight": (4 * d, d), "mlp.c_proj.bias": (d,)}
    shapes = {"transformer.wte.weight": (config.vocab_size, d),
              "transformer.wpe.weight": (config.context_length, d)}
    for i in range(config.number_of_layers):
        shapes.update({f"transformer.h.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
    return shapes


def validate_hf_shapes(shapes: dict[str, tuple[int, ...]], config: ModelConfig,
                       source: str) -> None:
    """Raise ArchitectureMismatchError listing missing / unexpected / wrong-shape tensors."""
    expected = expected_hf_shapes(config)
    found = {normalize_hf_key(k): v for k, v in shapes.items()}
    found = {k: v for k, v in found.items() if not is_ignored_hf_key(k)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {found[k]} vs model {expected[k]}"
             for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {items[:3]}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise ArchitectureMismatchError(
            f"{source} does not fit a GPT-2 with {config.number_of_layers} layers, width "
            f"{config.embedding_dimension}, vocab {config.vocab_size}: {'; '.join(parts)}. "
            "Pick the model size that matches the weights"
        )


# --------------------------------------------------------------------------- loading

def model_from_hf_tensors(tensors: Iterable[tuple[str, torch.Tensor]], config: ModelConfig,
                          device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> GPTModel:
    """A GPTModel holding HF-layout `tensors`, built on meta and filled by assignment."""
    model = meta_skeleton(config)
    expected = {k: p.shape for k, p in model.named_parameters()}
    state = {}
    try:
        for key, tensor in iter_converted(tensors, config.number_of_layers):
            if tensor.shape != expected[key]:
                raise ArchitectureMismatchError(
                    f"{key}: weights have shape {tuple(tensor.shape)}, the model "
                    f"{tuple(expected[key])}; pick the model size that matches the weights")
            state[key] = tensor.to(device=device, dtype=dtype)
    except WeightMappingError as error:
        raise ArchitectureMismatchError(f"{error}; pick the matching GPT-2 size") from error
    state["lm_head.weight"] = state["token_embedding.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def load_gpt2_weights(model: GPTModel, model_name_or_path: str | Path = "gpt2") -> GPTModel:
    """Load GPT-2 weights (hub name, save_pretrained folder, .safetensors or .bin file)
    into `model`, strictly. Shapes are checked before any weight changes, so a mismatch
    leaves the model as it was. A model on the meta device is filled by assignment."""
    if model is None:
        from utils.checkpoint_errors import ModelNotInitializedError

        raise ModelNotInitializedError("no model to load into; build it with GPTModel(config)")
    files = resolve_weight_files(model_name_or_path)
    validate_hf_shapes(hf_tensor_shapes(files), model.config, str(model_name_or_path))
    parameters = dict(model.named_parameters())
    if any(p.is_meta for p in parameters.values()):
        layers = model.config.number_of_layers
        tensors = iter_hf_tensors(files, temporary=copied_on_conversion(layers))
        state = dict(iter_converted(tensors, layers))
        state["lm_head.weight"] = state["token_embedding.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        model.tie_weights()
        return model
    with torch.no_grad():
        layers = model.config.number_of_layers
        tensors = iter_hf_tensors(files, temporary=copied_on_conversion(layers))
        for key, tensor in iter_converted(tensors, layers):
            parameters[key].copy_(tensor)
    return model


def load_openai_gpt2(model_size: str | Path = "small", device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, training: bool = False,
                     memory_check: bool = True) -> tuple[GPTModel, ModelConfig]:
    """`(model, config)` with OpenAI's GPT-2 weights, in eval mode on `device`.

    `model_size`: `small`/`medium`/`large`/`xl` (or `gpt2`, `gpt2-medium`, ...: downloaded
    from the hub once), a local `save_pretrained` folder, or a `.safetensors`/`.bin` file.
    Memory is checked first (`training=True` adds gradients and AdamW state), so a size
    that does not fit is refused with a suggestion instead of crashing the runtime.
    """
    size = gpt2_size(model_size)
    if size is not None and memory_check:
        check_memory(GPT2_CONFIGS[size], device, dtype, training, name=f"gpt2-{size}")
    files = (_weight_files_in_folder(download_from_hub(size)) if size is not None
             else resolve_weight_files(model_size))
    shapes = hf_tensor_shapes(files)  # headers only; read once for inference and checks
    config = GPT2_CONFIGS[size] if size is not None else \
        read_hf_config(files[0].parent) or infer_config(shapes)
    if memory_check and size is None:
        check_memory(config, device, dtype, training, name=str(model_size))
    validate_hf_shapes(shapes, config, str(model_size))
    tensors = iter_hf_tensors(files, temporary=copied_on_conversion(config.number_of_layers))
    model = model_from_hf_tensors(tensors, config, device, dtype)
    return model, config


# --------------------------------------------------------------------------- export


def iter_hf_state(model: GPTModel) -> Iterator[tuple[str, torch.Tensor]]:
    """GPT2LMHeadModel tensors for `model`, one at a time in HF's order, without the tied
    `lm_head.weight`; zeros for Q/K/V biases the model does not have
    (`mapping.iter_custom_to_hf`): exporting gpt2-xl then never holds a second 6 GB copy.
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return iter_custom_to_hf(state, model.config.number_of_layers)


def hf_state_dict_from_model(model: GPTModel) -> dict[str, torch.Tensor]:
    """The full GPT2LMHeadModel state dict for `model` (head tied to wte)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return convert_custom_to_hf(state, model.config.number_of_layers)


def write_safetensors(tensors: Iterable[tuple[str, torch.Tensor]],
                      shapes: dict[str, tuple[int, ...]], path: str | Path) -> None:
    """Write float32 `tensors` (arriving in `shapes`' order) as a .safetensors file, one at a
    time, atomically (`fileio.write_atomically`: a failed write leaves no file). The format
    is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the raw data; safetensors' own `save_file` needs every
    tensor in memory at once."""
    from utils.fileio import write_atomically

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # tensor data starts 8-byte aligned

    def write(handle) -> None:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for (name, tensor), (expected, shape) in zip(tensors, shapes.items(), strict=True):
            if name != expected or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"tensor {name} {tuple(tensor.shape)} arrived where "
                                 f"{expected} {tuple(shape)} was announced")
            array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
            handle.write(memoryview(array).cast("B"))

    write_atomically(Path(path), write)


@dataclasses.dataclass
class HFExport:
    """What `write_hf_folder` wrote: the folder, its files, and why no tokenizer files were
    written (None when they were)."""

    path: Path
    files: list[str]
    tokenizer_note: str | None


def export_to_hf(model: GPTModel, out_dir: str | Path, *, tokenizer: Any = None,
                 checkpoint: dict[str, Any] | None = None, data_description: str | None = None,
                 name: str | None = None) -> Path:
    """Write a complete Hugging Face folder for `model` and return its path: the weights
    (`GPT2LMHeadModel.from_pretrained(out_dir)` loads them with no missing or unexpected
    keys), `generation_config.json`, the tokenizer's files (`AutoTokenizer` and
    `pipeline("text-generation", model=out_dir)` work) and a model card (README.md).

    `tokenizer`: a name (`gpt2`, `byte`) or tokenizer object; default: the checkpoint's, else
    GPT-2's BPE for a 50,257-row model and bytes for a 257-row one. `checkpoint`: the dict
    the weights came from, for the card (steps, losses, settings); `data_description`: what
    the model was trained on (checkpoints do not record it); `name`: the card's title and
    the name its example loads (default: the folder's name).
    """
    return write_hf_folder(model, out_dir, tokenizer=tokenizer, checkpoint=checkpoint,
                           data_description=data_description, name=name).path


def write_hf_folder(model: GPTModel, out_dir: str | Path, *, tokenizer: Any = None,
                    checkpoint: dict[str, Any] | None = None,
                    data_description: str | None = None, name: str | None = None) -> HFExport:
    """`export_to_hf`, returning what was written (for the command line's report).

    Files are written in a temporary folder next to `out_dir` and moved in when complete
    (`fileio.write_folder_atomically`), so an interrupted export never leaves a
    half-written model behind.
    """
    from transformers import GenerationConfig

    from utils.fileio import write_folder_atomically
    from utils.pretrained.hf_tokenizer import tokenizer_files
    from utils.pretrained.model_card import model_card

    out_dir = Path(out_dir)
    config = model.config
    chosen = tokenizer if tokenizer is not None else default_tokenizer(config, checkpoint)
    tokenizer_export = tokenizer_files(chosen, config.vocab_size, config.context_length) \
        if chosen is not None else None
    eos = tokenizer_export.eos_token_id if tokenizer_export else None
    # Q/K/V biases are always present in HF's GPT-2; a bias-free model exports zeros.
    with_bias = dataclasses.replace(config, use_attention_bias=True)
    hf_config = to_hf_config(with_bias, architectures=["GPT2LMHeadModel"],
                             tie_word_embeddings=True,
                             **({"bos_token_id": eos, "eos_token_id": eos} if eos else {}))
    note = tokenizer_export.note if tokenizer_export else (
        f"no tokenizer was given and a vocabulary of {config.vocab_size:,} ids is neither "
        "GPT-2's (50,257) nor the byte tokenizer's (257)")
    card = model_card(
        name=name or out_dir.name, config=config,
        parameters=count_parameters(model), checkpoint=checkpoint,
        tokenizer_description=tokenizer_export.description if tokenizer_export else "unknown",
        tokenizer_note=note, data_description=data_description)
    extra = {**(tokenizer_export.files if tokenizer_export else {}), "README.md": card.encode()}

    def write_files(staging: Path) -> None:
        # lm_head.weight is left out: it is tied to wte, and HF re-ties it on load.
        write_safetensors(iter_hf_state(model), expected_hf_shapes(with_bias),
                          staging / "model.safetensors")
        hf_config.save_pretrained(staging)
        GenerationConfig.from_model_config(hf_config).save_pretrained(staging)
        for file_name, data in extra.items():
            (staging / file_name).write_bytes(data)

    names = write_folder_atomically(out_dir, write_files)
    return HFExport(out_dir, names, note)


def default_tokenizer(config: ModelConfig, checkpoint: dict[str, Any] | None) -> str | None:
    """The tokenizer a model was made with: the checkpoint's record, else the one whose
    vocabulary size the model has (GPT-2's BPE or bytes), else None."""
    recorded = (checkpoint or {}).get("tokenizer")
    if isinstance(recorded, str) and recorded:
        return recorded
    from utils.config import GPT2_VOCAB_SIZE
    from utils.tokenizer import ByteTokenizer

    return {GPT2_VOCAB_SIZE: "gpt2", ByteTokenizer.n_vocab: "byte"}.get(config.vocab_size)
