"""The names the head's outputs go by: the score's rating, the traits', the vibe words, and the
attributes that are never output. Plain constants, no numpy: `output` and the CLI need them at
start-up, before any model is loaded."""
from __future__ import annotations

SCORE_TARGET = "attractive"
TRAITS = (
    "trustworthy", "smart", "happy", "outgoing", "dominant", "cute", "memorable",
    "well-groomed", "alert", "typical", "familiar", "smug", "dorky", "age",
)  # fmt: skip
OUTPUTS = (SCORE_TARGET, *TRAITS)
VIBE_WORDS = {
    "happy": "cheerful",
    "outgoing": "outgoing",
    "smart": "smart",
    "trustworthy": "trustworthy",
    "dominant": "bold",
    "cute": "cute",
    "well-groomed": "polished",
    "alert": "alert",
    "memorable": "striking",
    "smug": "smug",
    "dorky": "quirky",
}
# The OMI README's attributes that must never be output (fairness reports only).
FORBIDDEN = (
    "asian", "middle-eastern", "hispanic", "islander", "native", "black", "white", "skin-color",
    "gay", "liberal", "godly", "privileged", "electable", "looks-like-you", "gender", "weight",
)  # fmt: skip
