"""`llmkit audit privacy`: does a causal LM give away what it was trained on?

Three probes, each reported with its evidence:
- PII in generations: N samples (temperature 1 by default) scanned by the data stage's detectors
  (`llmkit.data.pii`); every match is looked up in the dataset's train records, so a leak of a
  training address is told apart from an invented one.
- Memorisation (Carlini et al., "Quantifying Memorization", 2022): windows of the train records,
  the first `prefix_tokens` as the prompt; a window is extracted when greedy decoding reproduces the
  next `suffix_tokens` verbatim. The same on held-out (test, else val) records is the baseline: text
  anyone could predict (boilerplate, repeated lines) is extracted from both.
- Canaries: when the model was pretrained with `--canaries N`, each planted secret's exposure
  (`llmkit.audit.canaries`), next to the never-planted references.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from llmkit.audit.canaries import exposure as canary_exposure
from llmkit.audit.likelihood import continue_batch
from llmkit.audit.privacy_report import PrivacyReport, html_report
from llmkit.config import PrivacyAuditConfig
from llmkit.data import canaries as canary_lib
from llmkit.data.dataset import DatasetVersion, open_dataset
from llmkit.errors import UserError
from llmkit.generate import encode_prompt
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def privacy_audit(model_ref: str, cfg: PrivacyAuditConfig | None = None, ws: Workspace | None = None,
                  registry: Registry | None = None) -> PrivacyReport:
    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.models.kind import model_kind

    cfg = PrivacyAuditConfig.given(cfg, "llmkit.audit.privacy_audit", default=True)
    start = time.perf_counter()
    if not cfg.data:
        raise UserError("the privacy audit needs the training data: pass --data NAME (the dataset the model was trained on)",
                        param="privacy.data")
    if registry is None:
        ws = Workspace.open(ws)
        registry = Registry.for_workspace(ws.root)
    model = resolve_model(model_ref, registry)
    kind = model_kind(model)
    if kind != "causal":
        raise UserError(f"{model.ref} is a{'n' if kind == 'encoder' else ''} {kind} model: the privacy audit probes what a "
                        "causal language model generates; audit a model from 'llmkit train pretrain' or 'train sft'")
    ds = open_dataset(registry, cfg.data)
    planted = canary_lib.load(model.path) or _run_canaries(model)
    if not cfg.samples and not cfg.memorization_samples and not planted:  # its verdict was "nothing flagged"
        raise UserError(f"nothing to audit: privacy.samples and privacy.memorization_samples are 0 and {model.ref} has no "
                        "canaries; give --samples or --memorization-samples a number of generations or windows",
                        param="privacy.samples")
    lm, tokenizer = load_causal_lm(model)
    lm.eval()
    context = int(getattr(lm.config, "max_position_embeddings", 0) or 0) or 2048
    warnings: list[str] = []
    trained_on = (model.lineage or {}).get("dataset") or {}
    if trained_on.get("id") and trained_on["id"] != ds.id and trained_on.get("ref", "").split(":")[0] != ds.name:
        # a clean verdict on data the model never saw says nothing about what it memorised
        warnings.append(f"privacy.data = '{cfg.data}' is not the dataset {model.ref} was trained on "
                        f"({trained_on.get('ref') or trained_on['id']}): the memorization probe measures recall of text "
                        "it may never have seen; pass --data with its training data")

    prefix, suffix = cfg.prefix_tokens, cfg.suffix_tokens
    if prefix + suffix > context:
        prefix = max(1, context * prefix // (prefix + suffix))
        suffix = context - prefix
        warnings.append(f"prefix {cfg.prefix_tokens} + suffix {cfg.suffix_tokens} tokens exceed the model's context of "
                        f"{context}; used {prefix} + {suffix}")
    sample_tokens = min(cfg.sample_tokens, context - 1 - max(len(encode_prompt(tokenizer, p)) for p in cfg.prompts))
    if sample_tokens < 1:
        raise UserError(f"privacy.prompts: a prompt fills the model's context of {context} tokens; use shorter prompts")

    pii = _pii_probe(lm, tokenizer, cfg, sample_tokens, ds)
    memorization = _memorization_probe(lm, tokenizer, cfg, ds, prefix, suffix, warnings)
    canary_result = None
    if planted:
        rows = [canary_exposure(lm, tokenizer, c, cfg.candidates, cfg.seed) for c in planted]
        for row in rows:
            row["flagged"] = row["repeats"] > 0 and row["exposure"] >= cfg.exposure_threshold
        canary_result = {"candidates": cfg.candidates, "threshold": cfg.exposure_threshold,
                         "planted": [r for r in rows if r["repeats"] > 0], "references": [r for r in rows if r["repeats"] == 0]}

    findings: list[tuple[str, str]] = []  # (probe, why it is flagged)
    if pii["in_training"]:
        findings.append(("pii", f"{pii['in_training']} PII strings from the training data in {cfg.samples} generations"))
    gap = memorization["train"]["rate"] - memorization["heldout"]["rate"]
    if memorization["train"]["windows"] and gap > cfg.memorization_threshold:
        findings.append(("memorization", f"{memorization['train']['rate']:.3f} of train windows extracted verbatim vs "
                                         f"{memorization['heldout']['rate']:.3f} held out"))
    exposed = [r for r in (canary_result or {}).get("planted", []) if r["flagged"]]
    if exposed:
        findings.append(("canaries", f"{len(exposed)} of {len(canary_result['planted'])} planted secrets exposed "
                                     f"(>= {cfg.exposure_threshold} bits)"))
    report = PrivacyReport(model=model.ref, data=ds.ref, pii=pii, memorization=memorization, canaries=canary_result,
                           flagged=[probe for probe, _ in findings], reasons=[f"{p}: {why}" for p, why in findings],
                           seconds=round(time.perf_counter() - start, 2), out=cfg.out, warnings=warnings)
    from llmkit.audit.record import keep

    planted_rows = (canary_result or {}).get("planted", [])
    refs = (canary_result or {}).get("references", [])
    metrics = {"flagged_probes": len(findings), "pii_rate": pii["rate"], "pii_in_training": pii["in_training"],
               "memorization_train_rate": memorization["train"]["rate"],
               "memorization_heldout_rate": memorization["heldout"]["rate"]}
    if planted_rows:
        metrics.update(canary_max_exposure=max(r["exposure"] for r in planted_rows),
                       canary_reference_mean_exposure=sum(r["exposure"] for r in refs) / max(1, len(refs)))
    keep(report, html_report(report), "privacy-audit", model, ws, registry, metrics, ds.ref)
    return report


def _run_canaries(model) -> list[canary_lib.Canary] | None:
    run = ((model.lineage or {}).get("run") or {}).get("path")
    return canary_lib.load(Path(run)) if run else None


def _record_text(record: dict) -> str:
    if "text" in record:
        return str(record["text"])
    return "\n".join(str(m.get("content", "")) for m in record.get("messages", []) if isinstance(m, dict))


def _pii_probe(lm, tokenizer, cfg: PrivacyAuditConfig, sample_tokens: int, ds: DatasetVersion) -> dict[str, Any]:
    from llmkit.data.pii import find_pii

    generator = torch.Generator().manual_seed(cfg.seed)
    device = next(lm.parameters()).device
    texts: list[tuple[str, str]] = []  # (prompt, generated text) per generation
    for p, prompt in enumerate(cfg.prompts):
        count = cfg.samples // len(cfg.prompts) + (p < cfg.samples % len(cfg.prompts))
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        for first in range(0, count, cfg.batch_size):
            rows = min(cfg.batch_size, count - first)
            out = continue_batch(lm, ids.expand(rows, -1), sample_tokens, cfg.temperature, generator)
            texts += [(prompt, tokenizer.decode(row, skip_special_tokens=True)) for row in out.tolist()]
    found = [(i, prompt, text, m) for i, (prompt, text) in enumerate(texts) for m in find_pii(text)]
    seen = _in_training({m.text for *_, m in found}, ds.records_file("train"))
    by_type: dict[str, dict[str, int]] = {}
    for *_, m in found:
        entry = by_type.setdefault(m.type, {"matches": 0, "in_training": 0})
        entry["matches"] += 1
        entry["in_training"] += m.text in seen
    examples = [{"type": m.type, "text": m.text, "in_training": m.text in seen, "prompt": prompt,
                 "context": text[max(0, m.start - 40): m.end + 40]} for _, prompt, text, m in found]
    examples.sort(key=lambda e: not e["in_training"])
    with_pii = len({i for i, *_ in found})
    return {"generations": len(texts), "tokens_each": sample_tokens, "temperature": cfg.temperature,
            "with_pii": with_pii, "rate": round(with_pii / max(1, len(texts)), 4), "matches": len(found),
            "in_training": sum(m.text in seen for *_, m in found), "by_type": by_type, "examples": examples[: cfg.examples]}


def _in_training(strings: set[str], train_records: Path) -> set[str]:
    """Which strings occur as a whole somewhere in the train records (streamed line by line): a
    generated 'n20@example.com' is not counted because the data holds 'ann20@example.com'."""
    import re

    seen: set[str] = set()
    if not strings or not train_records.exists():
        return seen
    whole = {s: re.compile(r"(?<![\w.+-])" + re.escape(s) + r"(?![\w])") for s in strings}
    with open(train_records, encoding="utf-8") as fh:
        for line in fh:
            text = _record_text(json.loads(line))
            seen.update(s for s, pattern in whole.items() if s not in seen and s in text and pattern.search(text))
            if len(seen) == len(strings):
                break
    return seen


def _windows(tokenizer, file: Path, n: int, length: int, seed: int) -> list[list[int]]:
    """Up to n windows of `length` tokens from random records of a split: a reservoir sample of the
    records long enough (memory holds 4n records, whatever the split's size), then one random window each."""
    if not file.exists() or n == 0:
        return []
    rng = random.Random(seed)
    keep, pool, seen = 4 * n, [], 0
    with open(file, encoding="utf-8") as fh:
        for line in fh:
            text = _record_text(json.loads(line))
            if len(text) < length // 4:  # a character is at most 4 byte-level tokens: too short to fill a window
                continue
            seen += 1
            if len(pool) < keep:
                pool.append(text)
            elif (j := rng.randrange(seen)) < keep:
                pool[j] = text
    windows = []
    for text in pool:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            at = rng.randrange(len(ids) - length + 1)
            windows.append(ids[at: at + length])
        if len(windows) == n:
            break
    return windows


def _memorization_probe(lm, tokenizer, cfg: PrivacyAuditConfig, ds: DatasetVersion, prefix: int, suffix: int,
                        warnings: list[str]) -> dict[str, Any]:
    heldout = next((s for s in ("test", "val") if ds.records_file(s).exists()
                    and ds.records_file(s).stat().st_size), "test")
    result: dict[str, Any] = {"prefix_tokens": prefix, "suffix_tokens": suffix, "heldout_split": heldout, "examples": []}
    device = next(lm.parameters()).device
    for name, split in (("train", "train"), ("heldout", heldout)):
        windows = _windows(tokenizer, ds.records_file(split), cfg.memorization_samples, prefix + suffix, cfg.seed)
        extracted, matched = 0, []
        for first in range(0, len(windows), cfg.batch_size):
            batch = torch.tensor(windows[first: first + cfg.batch_size], device=device)  # [B, prefix + suffix]
            out = continue_batch(lm, batch[:, :prefix], suffix, 0.0, torch.Generator())
            same = (out == batch[:, prefix:]).long()  # [B, suffix]
            run = same.cumprod(1).sum(1)  # tokens reproduced before the first miss
            for row, length in enumerate(run.tolist()):
                matched.append(length / suffix)
                if length == suffix:
                    extracted += 1
                    if name == "train" and len(result["examples"]) < cfg.examples:
                        ids = batch[row].tolist()
                        result["examples"].append({"prefix": tokenizer.decode(ids[:prefix]),
                                                   "continuation": tokenizer.decode(ids[prefix:])})
        if len(windows) < cfg.memorization_samples:
            warnings.append(f"{split} split: {len(windows)} records of {prefix + suffix}+ tokens for the memorization probe "
                            f"(asked for {cfg.memorization_samples})")
        result[name] = {"split": split, "windows": len(windows), "extracted": extracted,
                        "rate": round(extracted / max(1, len(windows)), 4),
                        "mean_match": round(sum(matched) / max(1, len(matched)), 4)}
    return result
