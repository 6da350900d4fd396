"""Lexicon sentiment with VADER (package vadersentiment): English, social-media style text.

Output per text (the classification shape of models/postprocessing.py, `score` being the polarity):
  {"label": "positive", "score": 0.8622, "confidence": 0.93,
   "labels": [{"label": "positive", "score": 0.93}, {"label": "neutral", "score": 0.07}, ...],
   "proportions": {"positive": 0.741, "neutral": 0.259, "negative": 0.0}}
`score` is VADER's compound score in [-1, 1]; the label follows VADER's own cut-offs (compound >= 0.05
positive, <= -0.05 negative, neutral between).
"""
from __future__ import annotations

from typing import Any

from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.models.postprocessing import shape_scores

# VADER's published cut-offs for its compound score.
POSITIVE_FROM = 0.05
NEGATIVE_FROM = -0.05


def label_scores(compound: float) -> dict[str, float]:
    """A label distribution from the compound score.

    VADER gives no probabilities. The label's confidence grows from 0.5 at its cut-off to 1.0 at the end
    of its range (±1 for positive/negative, 0 for neutral); the rest goes to the neighbouring label.
    It orders texts by how clear-cut VADER finds them; it is not a calibrated probability.
    """
    if compound >= POSITIVE_FROM:
        confidence = 0.5 + 0.5 * (compound - POSITIVE_FROM) / (1 - POSITIVE_FROM)
        return {"positive": confidence, "neutral": 1 - confidence, "negative": 0.0}
    if compound <= NEGATIVE_FROM:
        confidence = 0.5 + 0.5 * (NEGATIVE_FROM - compound) / (1 + NEGATIVE_FROM)
        return {"negative": confidence, "neutral": 1 - confidence, "positive": 0.0}
    confidence = 0.5 + 0.5 * (1 - abs(compound) / POSITIVE_FROM)
    side = "positive" if compound > 0 else "negative"
    other = "negative" if side == "positive" else "positive"
    return {"neutral": confidence, side: 1 - confidence, other: 0.0}


class VaderSentiment:
    def __init__(self, name: str, version: str) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.info = ModelInfo(name=name, version=version, task="sentiment", device="cpu",
                              max_input_chars=10_000, max_batch_size=256)

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        outputs = []
        for text in inputs:
            polarity = self.analyzer.polarity_scores(str(text))
            compound = float(polarity["compound"])
            shaped = shape_scores(label_scores(compound))
            shaped["score"] = round(compound, 4)
            shaped["proportions"] = {"positive": polarity["pos"], "neutral": polarity["neu"],
                                     "negative": polarity["neg"]}
            outputs.append(shaped)
        return outputs
