"""The rule-based sentence splitter and passage packer behind the document indexing pipeline."""
from __future__ import annotations

from cortex_tasks.runtime.documents.text_splitting import MAX_SENTENCE_WORDS, passages, sentences


def test_sentences_keep_abbreviations_quotes_and_paragraphs():
    text = 'Dr. Smith lives in Paris. He said "Quoted." Is it big? Yes!\n\nA heading\n\nLast words'
    assert sentences(text) == ["Dr. Smith lives in Paris.", 'He said "Quoted."', "Is it big?", "Yes!",
                               "A heading", "Last words"]
    assert sentences("3.14 is pi. The value 2.5 stays whole.") == ["3.14 is pi.", "The value 2.5 stays whole."]


def test_overlong_sentences_are_cut_into_word_windows():
    words = " ".join(f"w{i}" for i in range(MAX_SENTENCE_WORDS * 2 + 5))
    pieces = sentences(words)
    assert [len(piece.split()) for piece in pieces] == [MAX_SENTENCE_WORDS, MAX_SENTENCE_WORDS, 5]


def test_passages_pack_whole_sentences_with_one_sentence_overlap():
    text = " ".join(f"Sentence number {n} has six words." for n in range(10))
    packed = passages(text, max_words=20)
    assert all(len(passage.split()) <= 20 for passage in packed)
    assert packed[0].startswith("Sentence number 0") and packed[-1].endswith("number 9 has six words.")
    for before, after in zip(packed, packed[1:]):  # each passage opens with its predecessor's last sentence
        assert after.startswith(sentences(before)[-1])
    # Every sentence is in some passage.
    assert all(any(f"number {n} " in passage for passage in packed) for n in range(10))


def test_a_short_text_is_one_passage():
    assert passages("Just one line without a period") == ["Just one line without a period"]
    assert passages("") == []
