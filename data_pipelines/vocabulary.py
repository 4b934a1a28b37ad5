"""Word vocabulary of the referring expressions (§3.2: "word embedding ... unknown word -> UNK").

Tokenisation is defined once, in TensorFlow string ops (`tokenize_tf`), so the tf.data pipeline
and the Python side (vocabulary building, decoding) cannot disagree: words are the lower-cased
text split on white space, with every punctuation character a token of its own.

The vocabulary is saved beside the checkpoints as a plain text file, one token per line, line
number = id; id 0 = <pad>, 1 = <unk>. A model trained with one vocabulary gives garbage with
another, so `Vocabulary.check_same` compares two and names the first differing id.
"""

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

PAD, UNK = '<pad>', '<unk>'
PAD_ID, UNK_ID = 0, 1

# RE2 syntax: any character that is not a letter, a digit or white space becomes its own token.
_PUNCT = r'([^\pL\pN\s])'


def tokenize_tf(text: tf.Tensor) -> tf.RaggedTensor:
  """Splits a string tensor (any shape) into words; returns a ragged tensor with one more axis."""
  text = tf.strings.lower(text, encoding='utf-8')
  text = tf.strings.regex_replace(text, _PUNCT, r' \1 ')
  return tf.strings.split(text)


def tokenize(text: str) -> list[str]:
  """Python view of `tokenize_tf` for one string (same op, run eagerly)."""
  return [w.decode('utf-8') for w in tokenize_tf(tf.constant(text)).numpy()]


def tokenize_many(texts: Sequence[str]) -> list[list[str]]:
  if not texts:
    return []
  words = tokenize_tf(tf.constant(list(texts))).to_list()
  return [[w.decode('utf-8') for w in ws] for ws in words]


class VocabularyMismatchError(ValueError):
  pass


class Vocabulary:
  """Token <-> id map. ids: 0 = <pad>, 1 = <unk>, then words by decreasing frequency."""

  def __init__(self, tokens: Sequence[str]):
    tokens = list(tokens)
    if tokens[:2] != [PAD, UNK]:
      raise ValueError(f'vocabulary must start with {PAD!r}, {UNK!r}; got {tokens[:2]}')
    if len(set(tokens)) != len(tokens):
      dup = [t for t, c in Counter(tokens).items() if c > 1]
      raise ValueError(f'duplicate tokens in vocabulary: {dup[:5]}')
    self.tokens = tokens
    self._ids = {t: i for i, t in enumerate(tokens)}

  @classmethod
  def build(cls, expressions: Iterable[str], min_count: int = 1) -> 'Vocabulary':
    """From the training expressions; ties in frequency broken alphabetically (deterministic)."""
    counts = Counter(w for ws in tokenize_many(list(expressions)) for w in ws)
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK)),
                   key=lambda w: (-counts[w], w))
    return cls([PAD, UNK, *words])

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.tokens == other.tokens

  def id(self, token: str) -> int:
    return self._ids.get(token, UNK_ID)

  @property
  def fingerprint(self) -> str:
    """sha256 of the token list; store it in checkpoints' metadata to detect a mismatch."""
    return hashlib.sha256('\n'.join(self.tokens).encode('utf-8')).hexdigest()

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write('\n'.join(self.tokens) + '\n')

  @classmethod
  def load(cls, path: str) -> 'Vocabulary':
    with tf.io.gfile.GFile(path, 'r') as f:
      tokens = f.read().split('\n')
    if tokens and tokens[-1] == '':
      tokens = tokens[:-1]
    try:
      return cls(tokens)
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from None

  def check_same(self, other: 'Vocabulary', what: str = 'saved vocabulary') -> None:
    """Raises VocabularyMismatchError naming the first differing id."""
    if self == other:
      return
    for i, (a, b) in enumerate(zip(self.tokens, other.tokens, strict=False)):
      if a != b:
        raise VocabularyMismatchError(f'vocabulary differs from the {what} at id {i}: '
                                      f'{a!r} vs {b!r}')
    raise VocabularyMismatchError(f'vocabulary size {len(self)} differs from the {what} '
                                  f'({len(other)})')

  def encode(self, text: str, max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N,) int32, mask (N,) bool); words past max_words are dropped."""
    ids = [self.id(w) for w in tokenize(text)][:max_words]
    out = np.zeros((max_words,), np.int32)
    out[:len(ids)] = ids
    return out, out != PAD_ID

  def decode(self, ids: Iterable[int], mask: Iterable[bool] | None = None) -> str:
    ids = list(np.asarray(ids).tolist())
    keep = [True] * len(ids) if mask is None else list(np.asarray(mask).tolist())
    return ' '.join(self.tokens[i] for i, k in zip(ids, keep, strict=True)
                    if k and i != PAD_ID)

  def lookup_table(self) -> tf.lookup.StaticHashTable:
    """word (tf.string) -> id (int32), unknown words -> <unk>."""
    init = tf.lookup.KeyValueTensorInitializer(
        tf.constant(self.tokens), tf.range(len(self.tokens), dtype=tf.int32))
    return tf.lookup.StaticHashTable(init, default_value=UNK_ID)


def encode_tf(text: tf.Tensor, table: tf.lookup.StaticHashTable, max_words: int
              ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Scalar string -> (ids (N,) int32, mask (N,) bool, number of words before truncation)."""
  return encode_words_tf(tokenize_tf(text), table, max_words)


def encode_words_tf(words: tf.Tensor, table: tf.lookup.StaticHashTable, max_words: int
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(n,) words (from `tokenize_tf`) -> (ids (N,), mask (N,), n)."""
  n = tf.shape(words)[0]
  ids = table.lookup(words[:max_words])
  ids = tf.pad(ids, [[0, max_words - tf.shape(ids)[0]]])
  ids = tf.ensure_shape(ids, [max_words])
  return ids, tf.not_equal(ids, PAD_ID), n
