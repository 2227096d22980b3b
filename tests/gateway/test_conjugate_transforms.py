"""Rules and round trips of the `leet` and `pig_latin` transforms; each lossy case says what is lost."""

from __future__ import annotations

import pytest

from gateway.stages.conjugate import leet, pig_latin

# (original, leet, leet round trip, what leet loses, pig latin, pig latin round trip, what pig latin loses)
CORPUS = [
    ("The quick brown fox jumps over the lazy dog.",
     "7h3 qu1ck br0wn f0x jump5 0v3r 7h3 l4zy d0g.",
     "The quick brown fox jumps over the lazy dog.", None,
     "Ethay ickquay ownbray oxfay umpsjay overway ethay azylay ogday.",
     "The quick brown fox jumps over the lazy dog.", None),
    ("Hello, World! How are you today?",
     "H3ll0, W0rld! H0w 4r3 y0u 70d4y?",
     "Hello, World! How are you today?", None,
     "Ellohay, Orldway! Owhay areway ouyay odaytay?",
     "Hello, World! How are you today?", None),
    ("In 2024, 3 of 10 people paid $4.50 (about 45%).",
     "1n 2024, 3 0f 10 p30pl3 p41d $4.50 (4b0u7 45%).",
     "In 2024, 3 of 10 people paid $4.50 (about 45%).", None,  # numbers stay numbers
     "Inway 2024, 3 ofway 10 eoplepay aidpay $4.50 (aboutway 45%).",
     "In 2024, 3 of 10 people paid $4.50 (about 45%).", None),
    ("Call me at 555-0173, ext. 42.",
     "C4ll m3 47 555-0173, 3x7. 42.",
     "Call me 47 555-0173, ext. 42.", "'at' has only a/t letters: it becomes the number 47",
     "Allcay emay atway 555-0173, extway. 42.",
     "Call me at 555-0173, ext. 42.", None),
    ("Dr. Smith's résumé: naïve café, über-cool!",
     "Dr. 5m17h'5 ré5umé: n4ïv3 c4fé, üb3r-c00l!",
     "Dr. Smith's résumé: naïve café, über-cool!", None,  # accented letters count as Latin letters
     "Dray. Ithsmay'say ésuméray: aïvenay afécay, überway-oolcay!",
     "Dr. Miths's résumé: naïve café, über-cool!", "'ithsm'+ay: the s of 'sm' is read as ending the rest"),
    ("Привет, мир! 東京 is big; ελληνικά too.",
     "Привет, мир! 東京 15 b1g; ελληνικά 700.",
     "Привет, мир! 東京 15 big; ελληνικά 700.", "'is' and 'too' have only a e i o s t letters: numbers",
     "Привет, мир! 東京 isway igbay; ελληνικά ootay.",  # other scripts are not transformed
     "Привет, мир! 東京 is big; ελληνικά too.", None),
    ('He said: "Stop!" Then he left.\nNew line here.',
     'H3 541d: "570p!" 7h3n h3 l3f7.\nN3w l1n3 h3r3.',
     'He said: "stop!" Then he left.\nNew line here.', "the capital of 'Stop' after a colon (only sentence starts are guessed)",
     'Ehay aidsay: "Opstay!" Enthay ehay eftlay.\nEwnay inelay erehay.',
     'He said: "Stop!" Then he left.\nNew line here.', None),
    ("NASA launched Apollo 11 in 1969.",
     "N454 l4unch3d 4p0ll0 11 1n 1969.",
     "Nasa launched apollo 11 in 1969.", "case of restored letters: NASA's lone N reads as Title case, Apollo mid-sentence as lower",
     "ASANAY aunchedlay Apolloway 11 inway 1969.",
     "NASA launched Apollo 11 in 1969.", None),
    ("I think it is what it is.",
     "1 7h1nk 17 15 wh47 17 15.",
     "1 think 17 15 what 17 15.", "'I', 'it', 'is' are all a e i o s t letters: they become 1, 17, 15",
     "Iway inkthay itway isway atwhay itway isway.",
     "I think it is what it is.", None),
    ("E=mc^2 and v1.0 shipped with mp3 support.",
     "3=mc^2 4nd v1.0 5h1pp3d w17h mp3 5upp0r7.",
     "3=mc^2 and vi.0 shipped with mpe support.", "'E' alone is a number; digits inside words with letters become letters (v1 -> vi, mp3 -> mpe)",
     "Eway=mcay^2 andway vay1.0 ippedshay ithway mpay3 upportsay.",
     "We=mc^2 and v1.0 shipped with mp3 support.", "'Eway' reads as the common word 'We' rather than 'E'"),
    ("Emoji 🎉 party: 7 cats & 3 dogs.",
     "3m0j1 🎉 p4r7y: 7 c475 & 3 d0g5.",
     "Emoji 🎉 party: 7 cats & 3 dogs.", None,
     "Emojiway 🎉 artypay: 7 atscay & 3 ogsday.",
     "Emoji 🎉 party: 7 cats & 3 dogs.", None),
    ("   leading and trailing spaces   ",
     "   l34d1ng 4nd 7r41l1ng 5p4c35   ",
     "   leading and trailing spaces   ", None,
     "   eadinglay andway ailingtray acesspay   ",
     "   leading and trailing pacess   ", "'acessp'+ay: the s of 'sp' is read as a plural's"),
    ("Queen Elizabeth sang a rhythm in yellow square.",
     "Qu33n 3l1z4b37h 54ng 4 rhy7hm 1n y3ll0w 5qu4r3.",
     "Queen elizabeth sang 4 rhythm in yellow square.", "a word starting with a/e/i/o/s/t loses its capital mid-sentence; 'a' becomes 4",
     "Eenquay Elizabethway angsay away ythmrhay inway ellowyay aresquay.",
     "Queen Elizabeth sang a rhythm in yellow square.", None),
    ("Strength, street, cats, start, spoon, plus.",
     "57r3ng7h, 57r337, c475, 574r7, 5p00n, plu5.",
     "Strength, street, cats, start, spoon, plus.", None,
     "Engthstray, eetstray, atscay, artstay, oonspay, usplay.",
     "Trengths, street, cats, start, poons, plus.", "s-clusters outside the common words: strength -> trengths, spoon -> poons"),
]


@pytest.mark.parametrize("row", CORPUS, ids=[r[0][:24] for r in CORPUS])
def test_leet_corpus(row: tuple[str, ...]) -> None:
    original, encoded, back, lost = row[0], row[1], row[2], row[3]
    assert leet.encode(original) == encoded
    assert leet.decode(encoded) == back
    assert (back == original) == (lost is None), f"lossy rows say what is lost: {lost}"


@pytest.mark.parametrize("row", CORPUS, ids=[r[0][:24] for r in CORPUS])
def test_pig_latin_corpus(row: tuple[str, ...]) -> None:
    original, encoded, back, lost = row[0], row[4], row[5], row[6]
    assert pig_latin.encode(original) == encoded
    assert pig_latin.decode(encoded) == back
    assert (back == original) == (lost is None), f"lossy rows say what is lost: {lost}"


def test_leet_rules() -> None:
    assert leet.encode("aeiost AEIOST bcdXYZ 2689") == "431057 431057 bcdXYZ 2689"
    # numbers in answers stay numbers; digits next to other scripts too
    assert leet.decode("1 + 1 = 2, 3.14, 10%, 2024年") == "1 + 1 = 2, 3.14, 10%, 2024年"
    assert leet.decode("7H3 4P1 R37URN5 J50N") == "THE API RETURNS JSON"  # all-caps words restored upper
    assert leet.decode("r3sul7: 7h3 c47. 7h3 d0g!\n4nd ") == "result: the cat. The dog!\nAnd "
    assert leet.decode('0k. "7h3 3nd."') == 'Ok. "The end."'  # start of text: capitalised
    assert leet.decode("3.7") == "3.7"  # no letters, no word
    # what is lost, exactly: words of a e i o s t only and digits inside words
    for word in ("a", "I", "is", "it", "at", "as", "so", "to", "its", "sat", "set", "sit", "tea", "eat", "toss"):
        assert leet.decode(leet.encode(word)) == leet.encode(word), word
    assert leet.decode(leet.encode("mp3 COVID19 4th 0x7f")) == "mpe COVIDI9 ath oxtf"


def test_pig_latin_rules() -> None:
    enc = pig_latin.encode
    assert enc("apple egg igloo orange umbrella") == "appleway eggway iglooway orangeway umbrellaway"
    assert enc("hello string yellow rhythm queen square hmm") == (
        "ellohay ingstray ellowyay ythmrhay eenquay aresquay hmmay"
    )
    assert enc("Hello HELLO iPhone McDonald") == "Ellohay ELLOHAY iPhoneway onaldMcDay"
    assert enc("don't stop-it 42nd 3D") == "onday'tay opstay-itway 42nday 3Day"
    assert enc("Ça été élève") == "Açay étéway élèveway"
    # decode leaves words that are not Pig Latin alone, and non-Latin words
    assert pig_latin.decode("xyz 42 hello мирay") == "xyz 42 hello мирay"
    assert pig_latin.decode("Ellohay ELLOHAY") == "Hello HELLO"
    # ambiguity: every candidate re-encodes to the same word; the common-word list decides
    assert enc("as") == enc("was") == "asway"
    assert pig_latin.decode("asway") == "was"
    assert pig_latin.decode(enc("wet")) == "et"  # lost: 'etway' reads as a vowel-initial word


def test_pig_latin_decode_inverts_encode_on_common_words() -> None:
    words = pig_latin.COMMON_WORDS
    wrong = [w for w in words if pig_latin.decode(pig_latin.encode(w)) != w]
    # the ones lost are exactly the ties between two common words (as/was, ...), where the more
    # frequent wins; none of them decodes to something that does not encode back
    for w in wrong:
        back = pig_latin.decode(pig_latin.encode(w))
        assert pig_latin.encode(back) == pig_latin.encode(w)
        assert back in words and words.index(back) < words.index(w), (w, back)
    assert len(wrong) < len(words) * 0.03, wrong
