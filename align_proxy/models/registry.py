"""Model registry: names a user can pass as `--model_name_or_path`, resolved to a loadable path.

Three kinds of name resolve: the offline ladder's rungs (built on first use), the Nemotron-CLIMB
proxies (`climb-62m`, `climb-350m`), and anything `from_pretrained` accepts (a Hub id or a local
directory). Every resolved model knows its parameter count, counted on the meta device from its
config so no weights are read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from align_proxy.errors import UserInputError
from align_proxy.models import ladder_spec
# Re-exported: the registry is where users look for the proxies' names.
from align_proxy.models.climb import CLIMB, CLIMB_REPO, LLAMA2_TOKENIZER, ClimbVariant  # noqa: F401

class ModelUnavailableError(UserInputError, RuntimeError):
    """A registry name that cannot be loaded here; the message says what to do about it."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    path: str  # what `from_pretrained` takes: a local directory or a Hub id
    parameters: int
    source: str  # "ladder", "climb", "local" or "hub"


def parameters_from_config(config) -> int:
    """Unique parameter count of a causal LM built from `config`, without allocating weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ladder_spec.count_parameters(model)


def registry_names() -> list[str]:
    return [r.name for r in ladder_spec.LadderSpec().rungs] + list(CLIMB)


def parameter_count(name_or_path: str) -> int:
    """A model's parameter count without building, downloading or converting it when it is a
    registry name (a transfer study's target size need not exist on this machine)."""
    if name_or_path in CLIMB:
        return parameters_from_config(CLIMB[name_or_path].config())
    spec = ladder_spec.LadderSpec()
    if name_or_path in {r.name for r in spec.rungs}:
        from align_proxy.models.tokenizer import build_tokenizer

        return parameters_from_config(spec.rung(name_or_path).config(len(build_tokenizer()), spec.max_positions))
    return resolve(name_or_path).parameters


def resolve(name_or_path: str, build_ladder: bool = True) -> ResolvedModel:
    """Resolve a registry name, local directory or Hub id; raise `ModelUnavailableError` with
    instructions when it cannot be loaded here."""
    spec = ladder_spec.LadderSpec()
    if name_or_path in {r.name for r in spec.rungs}:
        path = ladder_spec.ladder_dir(spec) / name_or_path
        if not (path / "rung.json").exists():  # pretraining it (or saying how) needs torch: only then import it
            from align_proxy.models import ladder

            path = ladder.rung_path(name_or_path, spec, build=build_ladder)
        # Counted when the rung was pretrained (`RungReport.parameters`, as parameters_from_config counts).
        return ResolvedModel(name_or_path, str(path), json.loads((path / "rung.json").read_text())["parameters"],
                             "ladder")
    if name_or_path in CLIMB:
        return _resolve_climb(CLIMB[name_or_path])
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelUnavailableError(
                f"{local} has no config.json, so it is not a Hugging Face model directory. If it holds a "
                "Megatron-LM checkpoint (model_optim_rng.pt), convert it to Hugging Face format first."
            )
        return ResolvedModel(local.name, str(local), _local_parameters(local), "local")
    if local.suffix in (".pt", ".pth") or local.exists():
        raise ModelUnavailableError(
            f"{name_or_path} is a file; pass a Hugging Face model directory (config.json + weights). A Megatron-LM "
            "checkpoint must be converted to Hugging Face format first."
        )
    return _resolve_hub(name_or_path)


PARAMETER_COUNTS = "parameter_counts.json"  # in the cache root: config.json digest -> parameter count


def _local_parameters(path: Path) -> int:
    """A local model's parameter count, counted once per config: counting builds the model on the meta device,
    which imports torch and transformers, seconds that a study's coordinator (which resolves every model) otherwise
    never spends. Kept in the cache root under the digest of config.json's bytes and the transformers version, so
    an edited config or another transformers counts again."""
    import hashlib
    from importlib.metadata import version

    from align_proxy.files import atomic_write

    key = hashlib.sha256((path / "config.json").read_bytes() + version("transformers").encode()).hexdigest()
    store = ladder_spec.cache_root() / PARAMETER_COUNTS
    try:
        counts = json.loads(store.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: count again
        counts = {}
    counts = counts if isinstance(counts, dict) else {}
    if isinstance(counts.get(key), int):
        return counts[key]
    from transformers import AutoConfig

    counts[key] = parameters_from_config(AutoConfig.from_pretrained(path))
    try:  # another process may write it meanwhile: the rename keeps either whole, and a lost entry is counted again
        atomic_write(store, json.dumps(counts, indent=1, sort_keys=True))
    except OSError:  # a read-only cache: the count is still right, only not kept
        pass
    return counts[key]


def _hub_offline_reason() -> str | None:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    return None


def _resolve_hub(model_id: str) -> ResolvedModel:
    known = ", ".join(registry_names())
    reason = _hub_offline_reason()
    from transformers import AutoConfig

    try:
        if reason:
            raise OSError(reason)
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"cannot load model {model_id!r}: it is not a registry name ({known}), not a local directory, and "
            f"the Hugging Face Hub did not provide it ({reason or err}). Offline, use a ladder rung such as "
            "'ladder-m' or a local model directory."
        ) from err
    return ResolvedModel(model_id, model_id, parameters_from_config(config), "hub")


def climb_cache_dir(variant: ClimbVariant) -> Path:
    return ladder_spec.cache_root() / "models" / variant.name


def _resolve_climb(variant: ClimbVariant) -> ResolvedModel:
    """A converted cache entry if there is one; else, online, download the release's Megatron
    checkpoint and convert it into the cache once; offline, say which file to convert where."""
    parameters = parameters_from_config(variant.config())
    cached = climb_cache_dir(variant)
    if (cached / "config.json").exists():
        return ResolvedModel(variant.name, str(cached), parameters, "climb")
    how_to = (
        f"The release ships a Megatron-LM checkpoint ({CLIMB_REPO}, the {variant.variant} variant's "
        f"{variant.megatron_checkpoint}). With the file at hand, convert it once into the cache: "
        f"`align-proxy convert model_optim_rng.pt {cached} --tokenizer {LLAMA2_TOKENIZER}`; or pass any "
        "converted Hugging Face directory as --model_name_or_path."
    )
    reason = _hub_offline_reason()
    if reason is None:
        try:
            from huggingface_hub import list_repo_files

            files = list_repo_files(CLIMB_REPO)
        except Exception as err:  # noqa: BLE001 - any failure to reach the Hub means the same to the user
            reason = f"the Hub is unreachable: {type(err).__name__}"
        else:
            hf_dir = _hf_format_dir(files, variant)
            if hf_dir is not None:
                from huggingface_hub import snapshot_download

                root = snapshot_download(CLIMB_REPO, allow_patterns=[f"{hf_dir}/*"])
                return ResolvedModel(variant.name, str(Path(root) / hf_dir), parameters, "climb")
            checkpoint = next((f for f in files if f.endswith(variant.megatron_checkpoint)), None)
            if checkpoint is None:
                raise ModelUnavailableError(f"{variant.name}: {CLIMB_REPO} has no {variant.megatron_checkpoint}. {how_to}")
            _download_and_convert(checkpoint, variant, cached)
            return ResolvedModel(variant.name, str(cached), parameters, "climb")
    raise ModelUnavailableError(f"{variant.name} cannot be downloaded ({reason}). {how_to}")


def _download_and_convert(filename: str, variant: ClimbVariant, target: Path) -> None:
    from filelock import FileLock
    from huggingface_hub import hf_hub_download

    from align_proxy.models.convert import convert_megatron_to_hf

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # every rank of a launch resolves the name; one converts
        if (target / "config.json").exists():
            return
        print(f"[align-proxy] downloading {CLIMB_REPO}/{filename} and converting it into {target} (once)", flush=True)
        source = hf_hub_download(CLIMB_REPO, filename)
        convert_megatron_to_hf(Path(source), target, tokenizer=LLAMA2_TOKENIZER, variant=variant.variant)


def _hf_format_dir(files: list[str], variant: ClimbVariant) -> str | None:
    """The folder of the repo holding this variant in Hugging Face format, if the release has one."""
    for name in files:
        folder, _, base = name.rpartition("/")
        if base == "config.json" and variant.variant in folder.lower():
            if any(f.startswith(folder + "/") and f.endswith(".safetensors") for f in files):
                return folder
    return None
