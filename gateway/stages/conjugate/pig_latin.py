"""Pig Latin: each Latin-script word's leading consonants move to its end + "ay"; undone by search.

Rules (docs/conjugate.md restates them with examples):

- A word is a maximal run of letters. Words with a letter outside the Latin script (Greek,
  Cyrillic, CJK, ...) are left as they are, and so is everything between words: digits,
  punctuation, apostrophes (``don't`` is the two words ``don`` and ``t``), spaces.
- A word starting with a vowel (a e i o u, accented or not) gets ``way``: ``apple`` → ``appleway``.
- Otherwise its leading consonant cluster moves to the end, followed by ``ay``: ``hello`` →
  ``ellohay``, ``string`` → ``ingstray``. ``y`` is a consonant as the first letter and a vowel after
  it (``yellow`` → ``ellowyay``, ``rhythm`` → ``ythmrhay``); ``qu`` stays together (``queen`` →
  ``eenquay``); a word without vowels moves whole (``hmm`` → ``hmmay``).
- Capitalisation is kept: ``Hello`` → ``Ellohay``, ``HELLO`` → ``ELLOHAY``; other mixes keep each
  letter's case where it moves (``iPhone`` → ``iPhoneway``, ``McDonald`` → ``onaldMcDay``).

``decode`` undoes a word when some word encodes to it: it lists every candidate (the ``way`` reading
and each split of the consonants before ``ay``) and keeps those that encode back to the word
exactly. Several can: the round trip cannot tell ``as`` from ``was`` (both ``asway``), ``cats`` from
``scat`` (``atscay``), ``tarts`` from ``start`` (``artstay``). It picks, in order: the candidate
among the ~500 common English words of ``COMMON_WORDS`` that ranks highest there; else the ``way``
reading (a vowel-initial word); else, among clusters that are usual English onsets, one that
leaves a usual ending (``-ing -ed -ly -tion -ment -ness``: ``eadinglay`` → ``leading``, not
``gleadin``), then the longest, taking an ``s`` before another consonant into the cluster last
(it is more often a plural's: ``atscay`` → ``cats``); else the shortest cluster. Words that no word encodes to (no ``ay``
ending, or no rotation that fits) are left unchanged.

What the round trip loses: whatever that choice gets wrong — ``as`` comes back as ``was``, ``wet`` as
``et``, ``strength`` as ``trengths``, ``spoon`` as ``poons``, ``McDonald`` (``onaldMcDay``) as
``DonaldMc``. Words of other scripts are not transformed at all (so they are not hidden either).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["COMMON_WORDS", "decode", "encode"]

_WORD = re.compile(r"[^\W\d_]+")

COMMON_WORDS: tuple[str, ...] = tuple(
    """the of and to a in is it you that he was for on are with as i his they be at one have this from or
    had by not word but what some we can out other were all there when up use your how said an each she
    which do their time if will way about many then them write would like so these her long make thing see
    him two has look more day could go come did number sound no most people my over know water than call
    first who may down side been now find any new work part take get place made live where after back little
    only round man year came show every good me give our under name very through just form sentence great
    think say help low line differ turn cause much mean before move right boy old too same tell does set three
    want air well also play small end put home read hand port large spell add even land here must big high
    such follow act why ask men change went light kind off need house picture try us again animal point mother
    world near build self earth father head stand own page should country found answer school grow study still
    learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard
    start might story saw far sea draw left late run while press close night real life few north open seem
    together next white children begin got walk example ease paper group always music those both mark often
    letter until mile river car feet care second book carry took science eat room friend began idea fish
    mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready
    above ever red list though feel talk bird soon body dog family direct pose leave song measure door product
    black short numeral class wind question happen complete ship area half rock order fire south problem piece
    told knew pass since top whole king space heard best hour better true during hundred five remember step
    early hold west ground interest reach fast verb sing listen six table travel less morning ten simple
    several vowel toward war lay against pattern slow center love person money serve appear road map rain rule
    govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
    figure star box noun field rest correct able pound done beauty drive stood contain front teach week final
    gave green oh quick develop ocean warm free minute strong special mind behind clear tail produce fact
    street inch multiply nothing course stay wheel full force blue object decide surface deep moon island foot
    system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
    shape equate hot miss brought heat snow tire bring yes distant fill east paint language among""".split()
)
"""About 500 English words by frequency, most frequent first: the tie-breaker of ``decode``."""
_RANK = {w: i for i, w in enumerate(COMMON_WORDS)}

_ONSETS = frozenset(
    """b c d f g h j k l m n p q r s t v w x y z bl br ch chr cl cr dr dw fl fr gh gl gn gr kl kn kr ph phr pl
    pn pr ps qu rh sc sch schr scr sh shr sk sl sm sn sp sph spl spr squ st str sw th thr tr tw wh wr""".split()
)
"""Consonant clusters that start English words (``qu`` counted as one)."""


_SUFFIXES = ("ing", "ed", "ly", "tion", "ment", "ness")
"""Endings that make a candidate the likelier reading (``eadinglay``: ``leading``, not ``gleadin``)."""


def _is_latin(word: str) -> bool:
    return all(unicodedata.name(c, "").startswith("LATIN ") for c in word)


def _base(c: str) -> str:
    return unicodedata.normalize("NFD", c)[0].lower()


def _split(word: str) -> int:
    """Length of the leading consonant cluster (0 for a vowel-initial word)."""
    v = len(word)
    for i, c in enumerate(word):
        b = _base(c)
        if b in "aeiou" or (i > 0 and b == "y"):
            v = i
            break
    if 0 < v < len(word) and _base(word[v - 1]) == "q" and _base(word[v]) == "u":
        v += 1
    return v


def _encode_word(word: str) -> str:
    if not _is_latin(word):
        return word
    cased = [c for c in word if c.isupper() or c.islower()]
    if len(cased) >= 2 and all(c.isupper() for c in cased):
        return _encode_word(word.lower()).upper()
    if word[0].isupper() and not any(c.isupper() for c in word[1:]):
        low = _encode_word(word.lower())
        return low[0].upper() + low[1:]
    v = _split(word)
    return word + "way" if v == 0 else word[v:] + word[:v] + "ay"


def encode(text: str) -> str:
    """Pig Latin of every Latin-script word of ``text`` (module docstring); the rest is kept."""
    return _WORD.sub(lambda m: _encode_word(m.group()), text)


def _candidates(word: str) -> list[tuple[str, int]]:
    """(original, cluster length; 0 for the ``way`` reading) for every word that encodes to ``word``."""
    low = word.lower()
    out: list[tuple[str, int]] = []
    if low.endswith("way") and len(low) > 3 and _split(low[:-3]) == 0:
        out.append((word[:-3], 0))
    if low.endswith("ay") and len(low) > 2:
        stem = word[:-2]
        for k in range(1, len(stem) + 1):
            cand = stem[-k:] + stem[:-k]
            if _encode_word(cand.lower()) == low:
                out.append((cand, k))
    return out


def _s_cluster(cluster: str) -> bool:
    # "st", "sp", "spl", ...: the "s" may as well end the rest (a plural: "cats" vs "scat")
    return len(cluster) > 1 and cluster[0] == "s" and not cluster.startswith(("sh", "sch", "squ"))


def _choose(cands: list[tuple[str, int]]) -> str:
    ranked = [c for c in cands if c[0].lower() in _RANK]
    if ranked:
        return min(ranked, key=lambda c: _RANK[c[0].lower()])[0]
    for cand, k in cands:
        if k == 0:
            return cand
    onsets = [(c, c[0][: c[1]].lower()) for c in cands if c[0][: c[1]].lower() in _ONSETS]
    if onsets:
        return max(onsets, key=lambda o: (o[0][0].lower().endswith(_SUFFIXES), not _s_cluster(o[1]), o[0][1]))[0][0]
    return min(cands, key=lambda c: c[1])[0]


def _decode_word(word: str) -> str:
    if not _is_latin(word):
        return word
    cands = _candidates(word)
    if not cands:
        return word
    cased = [c for c in word if c.isupper() or c.islower()]
    if len(cased) >= 2 and all(c.isupper() for c in cased):
        return _choose(_candidates(word.lower())).upper()
    if word[0].isupper() and not any(c.isupper() for c in word[1:]):
        low = _choose(_candidates(word.lower()))
        return low[0].upper() + low[1:]
    return _choose(cands)


def decode(text: str) -> str:
    """Undo ``encode`` word by word where a word encodes to it (module docstring); others are kept."""
    return _WORD.sub(lambda m: _decode_word(m.group()), text)
