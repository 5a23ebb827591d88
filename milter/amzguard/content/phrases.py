"""Built-in phrase lists: incentive and review-manipulation wording, and opt-out wording, per language.

Amazon forbids offering anything for a review, asking for a positive (5-star) review or only satisfied
buyers, and asking to change or remove a review; it also forbids opt-out links. The lists are deliberately
specific (whole phrases, not single words such as "review" or "gift") because a neutral review request uses
the same nouns: "please share your experience by leaving a review" must pass, "leave a 5-star review"
must not. Wording rules still misfire, so ``incentive-wording`` only logs by default.

A phrase matches case-insensitively at word boundaries; white space in it matches any white space (line
breaks of wrapped text too), a hyphen matches a hyphen, a space or nothing, and ``'`` matches ``'`` or ``’``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

INCENTIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        # a reward for a review
        "in exchange for a review", "in exchange for your review", "in return for a review",
        "in return for your review", "for your review you will receive", "for leaving a review you",
        "gift card for your review", "free gift for your review", "refund for your review",
        "refund in exchange", "coupon code", "discount code", "promo code", "voucher code",
        # only positive reviews, only satisfied buyers
        "5-star review", "five-star review", "5-star rating", "five-star rating", "5 stars",
        "five stars", "positive review", "positive feedback", "good review", "if you are satisfied",
        "if you are happy with", "if you were satisfied", "before leaving a review",
        "before you leave a review", "instead of a negative review",
        # changing or removing a review
        "change your review", "update your review", "remove your review", "delete your review",
        "revise your review", "edit your review", "change your feedback", "remove your feedback",
        "remove the negative", "take down your review",
    ),
    "de": (
        "für ihre bewertung erhalten sie", "als dankeschön für ihre bewertung", "im gegenzug für eine bewertung",
        "für eine bewertung erhalten", "gutschein für ihre bewertung", "geschenk für ihre bewertung",
        "erstattung für ihre bewertung", "gutscheincode", "rabattcode",
        "5-sterne-bewertung", "5 sterne", "fünf sterne", "positive bewertung", "gute bewertung",
        "wenn sie zufrieden sind", "falls sie zufrieden sind", "bevor sie eine bewertung",
        "bevor sie eine negative",
        "bewertung ändern", "bewertung zu ändern", "bewertung entfernen", "bewertung zu entfernen",
        "bewertung löschen", "bewertung zu löschen", "bewertung anpassen", "bewertung zurückziehen",
        "bewertung zu überarbeiten",
    ),
    "fr": (
        "en échange d'un avis", "en échange de votre avis", "pour votre avis, vous recevrez",
        "cadeau pour votre avis", "remboursement contre un avis", "bon de réduction", "code promo",
        "code de réduction",
        "avis 5 étoiles", "5 étoiles", "cinq étoiles", "avis positif", "bon avis",
        "si vous êtes satisfait", "si vous êtes satisfaite", "avant de laisser un avis",
        "modifier votre avis", "supprimer votre avis", "retirer votre avis", "changer votre avis",
        "mettre à jour votre avis", "modifier votre évaluation", "supprimer votre évaluation",
    ),
    "it": (
        "in cambio di una recensione", "in cambio della sua recensione", "omaggio per la sua recensione",
        "rimborso in cambio", "buono sconto", "codice sconto", "codice promozionale",
        "recensione a 5 stelle", "5 stelle", "cinque stelle", "recensione positiva", "feedback positivo",
        "se è soddisfatto", "se è soddisfatta", "se sei soddisfatto", "prima di lasciare una recensione",
        "modificare la sua recensione", "modificare la recensione", "rimuovere la recensione",
        "rimuovere la sua recensione", "eliminare la recensione", "cancellare la recensione",
        "cambiare la recensione",
    ),
    "es": (
        "a cambio de una reseña", "a cambio de su reseña", "a cambio de una valoración",
        "regalo por su reseña", "reembolso a cambio", "cupón de descuento", "código de descuento",
        "código promocional",
        "reseña de 5 estrellas", "5 estrellas", "cinco estrellas", "reseña positiva", "valoración positiva",
        "opinión positiva", "si está satisfecho", "si está satisfecha", "si quedó satisfecho",
        "antes de dejar una reseña",
        "modificar su reseña", "cambiar su reseña", "eliminar su reseña", "retirar su reseña",
        "borrar su reseña", "modificar su valoración", "eliminar su valoración", "actualizar su reseña",
    ),
}  # fmt: skip

OPT_OUT_PHRASES: tuple[str, ...] = (
    "unsubscribe", "opt out", "opt-out", "manage your preferences", "email preferences",
    "stop receiving these",
    "abmelden", "abbestellen", "austragen", "abmeldung",
    "désabonner", "désinscrire", "désabonnement", "désinscription",
    "annulla l'iscrizione", "cancella l'iscrizione", "disiscriviti", "disiscrizione",
    "darse de baja", "darte de baja", "cancelar la suscripción", "anular la suscripción", "baja de la lista",
)  # fmt: skip
"""Wording of an opt-out link (its text, or the text just before a URL), all five languages at once."""

OPT_OUT_URL_RE = re.compile(
    r"unsub|opt-?out|optout|abmeld|abbestell|newsletter/?(?:cancel|remove)|d[eé]sinscri|d[eé]sabonn|"
    r"disiscri|/baja\b|darse-de-baja|list-manage\.com/unsubscribe",
    re.I,
)
"""Opt-out wording inside a URL (``/unsubscribe?u=…``, ``?action=abmelden``)."""


def phrase_pattern(phrase: str) -> str:
    words = phrase.lower().split()
    parts = []
    for word in words:
        piece = re.escape(word)
        piece = piece.replace(r"\-", r"[-\s]?").replace("'", "['’]")
        parts.append(piece)
    return r"\s+".join(parts)


def compile_phrases(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for all phrases (longest first, so the longest match is reported)."""
    unique = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    if not unique:
        return None
    alternation = "|".join(phrase_pattern(p) for p in unique)
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.I)


_WORD_RE = re.compile(r"\w+")


class PhraseMatcher:
    """Finds phrases in text; a phrase is only searched for when every word of it occurs in the text.

    One alternation of ~170 phrases tried at every position cost ~0.5 ms on a 1.5 KB review request;
    the word test (one pass to collect the text's words, then set look-ups) rules out nearly every
    phrase first, so a clean message costs a few microseconds here.
    """

    def __init__(self, phrases: Iterable[str]) -> None:
        unique = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
        # Each phrase is filed under its longest word; only phrases filed under a word of the text are
        # looked at further (one set intersection instead of a test per phrase).
        self.by_word: dict[str, list[tuple[int, frozenset[str], str]]] = {}
        for order, phrase in enumerate(unique):
            needed = frozenset(_WORD_RE.findall(phrase.lower()))
            if needed:
                self.by_word.setdefault(max(needed, key=len), []).append((order, needed, phrase))
        self.keys = frozenset(self.by_word)
        self._compiled: dict[str, re.Pattern[str]] = {}

    def finditer(self, text: str) -> list[re.Match[str]]:
        words = set(_WORD_RE.findall(text.lower()))
        found = [(order, phrase) for key in self.keys & words for order, needed, phrase in self.by_word[key] if needed <= words]
        candidates = [phrase for _, phrase in sorted(found)]
        if not candidates:
            return []
        key = "\0".join(candidates)
        pattern = self._compiled.get(key)
        if pattern is None:
            alternation = "|".join(phrase_pattern(p) for p in candidates)
            pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.I)
            if len(self._compiled) < 256:
                self._compiled[key] = pattern
        return list(pattern.finditer(text))


def incentive_phrases(languages: Iterable[str], replaced: tuple[str, ...] | None, extra: Iterable[str]) -> list[str]:
    base = list(replaced) if replaced is not None else [p for lang in languages for p in INCENTIVE_PHRASES[lang]]
    return base + list(extra)
