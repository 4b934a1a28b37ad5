"""Tokenisation and vocabulary: eager and inside tf.data, save/load, mismatch detection."""

import numpy as np
import pytest
import tensorflow as tf

from data_pipelines.vocabulary import (
  PAD_ID,
  UNK_ID,
  Vocabulary,
  VocabularyMismatchError,
  encode_tf,
  tokenize,
  tokenize_many,
)

EXPS = ['The red triangle', 'a dog, running to the LEFT!', 'the red dog']


def test_tokenize_lowercases_and_splits_punctuation():
  assert tokenize('A Dog, running to the LEFT!') == ['a', 'dog', ',', 'running', 'to', 'the',
                                                     'left', '!']
  assert tokenize("man's  hat") == ['man', "'", 's', 'hat']
  assert tokenize('') == []
  assert tokenize_many(['X y', 'Été.']) == [['x', 'y'], ['été', '.']]


def test_build_ids_and_unknown():
  v = Vocabulary.build(EXPS)
  assert v.tokens[:2] == ['<pad>', '<unk>']
  assert v.tokens[2] == 'the'  # most frequent first
  ids, mask = v.encode('the purple dog', max_words=5)
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.tolist() == [v.id('the'), UNK_ID, v.id('dog'), PAD_ID, PAD_ID]
  assert mask.tolist() == [True, True, True, False, False]
  assert v.decode(*v.encode('the red dog', 6)) == 'the red dog'


def test_truncates_to_max_words():
  v = Vocabulary.build(EXPS)
  ids, mask = v.encode('the red dog the red dog', max_words=4)
  assert mask.all() and v.decode(ids) == 'the red dog the'


def test_save_load_and_mismatch(tmp_path):
  v = Vocabulary.build(EXPS)
  path = str(tmp_path / 'ckpt' / 'vocab.txt')
  v.save(path)
  assert open(path).read().splitlines()[:3] == ['<pad>', '<unk>', 'the']
  w = Vocabulary.load(path)
  assert w == v and w.fingerprint == v.fingerprint
  w.check_same(v)
  other = Vocabulary.build(EXPS + ['a blue cat'])
  assert other.fingerprint != v.fingerprint
  with pytest.raises(VocabularyMismatchError, match='at id'):
    other.check_same(v)
  with pytest.raises(VocabularyMismatchError, match='size'):
    Vocabulary(v.tokens + ['zebra']).check_same(v)


def test_load_rejects_a_file_without_special_tokens(tmp_path):
  p = tmp_path / 'bad.txt'
  p.write_text('the\nred\n')
  with pytest.raises(ValueError, match='bad.txt'):
    Vocabulary.load(str(p))


def test_encode_tf_eager_matches_python():
  v = Vocabulary.build(EXPS)
  table = v.lookup_table()
  for text in ['The red DOG, running!', 'zebra', 'the red dog the red dog']:
    ids, mask, n = encode_tf(tf.constant(text), table, 4)
    ref_ids, ref_mask = v.encode(text, 4)
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    assert int(n) == len(tokenize(text))


def test_encode_tf_inside_tf_data():
  v = Vocabulary.build(EXPS)
  table = v.lookup_table()
  ds = tf.data.Dataset.from_tensor_slices(EXPS).map(lambda s: encode_tf(s, table, 6)[:2],
                                                    num_parallel_calls=2)
  for text, (ids, mask) in zip(EXPS, ds.as_numpy_iterator(), strict=True):
    assert v.decode(ids, mask) == ' '.join(tokenize(text)[:6])
