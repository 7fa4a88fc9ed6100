"""IWSLT14 de-en preparation (data/iwslt14.py) reproduces fairseq's prepare-iwslt14.sh.

On the real files in ../shared/data/iwslt14-de-en (skipped when absent):
* the five test sets, prepared from the original TED XML, equal fairseq's tokenized files
  byte for byte, each set (`tok-per-set/`) and their concatenation (`tok/test.*`). This needs
  the current tokenizer.perl rule that splits the period off a line's last word (`in the u.s .`,
  `usw .`), which sacremoses 0.2.0 lacks: plain `sacremoses.MosesTokenizer(lang).tokenize(…,
  escape=True)` differs on 31 of the 13,500 lines, exactly those whose last word is a
  non-breaking prefix (an initial such as `B.`, `usw.`, `Art.`, a German ordinal such as `70.`)
  or holds a period itself (`U.S.`, `GoogleArtProject.com.`);
* fairseq's BPE code (`bpe10k/code`) applied to `tok/{valid,test}` gives `bpe10k/{valid,test}`
  byte for byte.
The training text itself is not among the shared files, so the train/valid path is checked on a
small release built here, against values that follow from the script's rules.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
import tarfile

import pytest

from data import iwslt14

SHARED = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'iwslt14-de-en'


def _shared(*parts: str) -> Path:
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'{path} is missing: the shared IWSLT14 reference files are not available here')
  return path


def _lines(path: Path) -> list[str]:
  text = path.read_bytes().decode('utf-8')
  assert text.endswith('\n'), f'{path} does not end with a line break'
  return text[:-1].split('\n')


def _text(lines: list[str]) -> bytes:
  return ''.join(line + '\n' for line in lines).encode('utf-8')


def _mismatches(ours: list[str], ref: list[str], name: str) -> list[str]:
  """Differing lines of two equally long files, printed as a mismatch rate."""
  assert len(ours) == len(ref), f'{name}: {len(ours)} lines, fairseq has {len(ref)}'
  bad = [f'line {i + 1}:\n  ours:    {a}\n  fairseq: {b}'
         for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
  print(f'{name}: {len(bad)} of {len(ref)} lines differ ({len(bad) / max(len(ref), 1):.4%})')
  return bad


# ---------------------------------------------------------------- real files


def test_test_sets_reproduce_fairseq_tokenized_files():
  orig, per_set, tok = _shared('orig'), _shared('tok-per-set'), _shared('tok')
  for lang in iwslt14.LANGS:
    concatenated = []
    for test_set in iwslt14.TEST_SETS:
      xml = _lines(orig / iwslt14.xml_file(test_set, lang))
      ours = iwslt14.tokenized_segments(xml, lang)
      ref_path = per_set / f'{test_set}.de-en.{lang}'
      bad = _mismatches(ours, _lines(ref_path), ref_path.name)
      assert not bad, '\n'.join(bad[:5])
      assert _text(ours) == ref_path.read_bytes()
      concatenated += ours
    # prepare-iwslt14.sh: cat dev2010 TEDX.dev2012 tst2010 tst2011 tst2012 > test.$l
    assert _text(concatenated) == (tok / f'test.{lang}').read_bytes()


def test_fairseq_bpe_code_reproduces_fairseq_bpe_files():
  code, tok, bpe = _shared('bpe10k', 'code'), _shared('tok'), _shared('bpe10k')
  for split in ('valid', 'test'):
    for lang in iwslt14.LANGS:
      ours = iwslt14.apply_bpe(code, _lines(tok / f'{split}.{lang}'))
      bad = _mismatches(ours, _lines(bpe / f'{split}.{lang}'), f'bpe10k/{split}.{lang}')
      assert not bad, '\n'.join(bad[:5])
      assert _text(ours) == (bpe / f'{split}.{lang}').read_bytes()


# ---------------------------------------------------------------- step functions


def test_strip_train_tags_is_the_scripts_grep_and_sed():
  lines = ['<url>http://www.ted.com/talks/x.html</url>', '<keywords>talks, art</keywords>',
           '<talkid>7</talkid>', '<title>Ein Titel</title>',
           '<description>TED Talk: eine Beschreibung.</description>', 'Text mit <url> drin',
           'Ein Satz.', '<reviewer>Jane</reviewer>', '']
  assert list(iwslt14.strip_train_tags(lines)) == [
      'Ein Titel', 'TED Talk: eine Beschreibung.', 'Ein Satz.', '<reviewer>Jane</reviewer>', '']


def test_xml_segments_is_the_scripts_grep_and_sed():
  lines = ['<doc docid="1" genre="lectures">', '<title>It’s a title</title>',
           '<seg id="1"> It’s here. </seg>', '  <seg id="22">\tTwo  spaces </seg> ',
           '<seg id="3"></seg>', '</doc>']
  # Whitespace before the opening tag stays (the tokenizer drops it); ’ only changes in segs.
  assert list(iwslt14.xml_segments(lines)) == ["It's here.", '  Two  spaces', '']


@pytest.mark.parametrize('lang, line, expected', [
    # tokenizer.perl splits a line's last period even after an abbreviation or initial.
    ('en', 'But those are all the roads in the U.S.', 'But those are all the roads in the U.S .'),
    ('de', 'Viele sind verdeckt usw.', 'Viele sind verdeckt usw .'),
    ('en', 'Dr. Smith met Mr. Jones.', 'Dr. Smith met Mr. Jones .'),
    # NUMERIC_ONLY prefixes keep their period only before a number.
    ('en', 'See No. 5 and No. Way out', 'See No. 5 and No . Way out'),
    ('en', "It's 1990's \"news\" [sic] & <b>|x",
     'It &apos;s 1990 &apos;s &quot; news &quot; &#91; sic &#93; &amp; &lt; b &gt; &#124; x'),
    ('de', "Geht's gut?", 'Geht &apos; s gut ?'),
    ('en', 'Wait... what?', 'Wait ... what ?'),
    ('de', '5,300 Leute, 0,5%', '5,300 Leute , 0,5 %'),
    ('en', 'a\tb\x01c  d', 'a bc d'),
    ('en', '   ', '   '),  # blank lines pass through untouched
    ('en', '', ''),
])
def test_tokenize_follows_tokenizer_perl(lang, line, expected):
  assert iwslt14.tokenize([line], lang) == [expected]


def test_tokenize_rejects_other_languages():
  with pytest.raises(ValueError, match='de, en'):
    iwslt14.tokenize(['x'], 'fr')


def test_clean_corpus_has_clean_corpus_n_semantics():
  words = lambda n: ' '.join(['w'] * n)  # pylint: disable=unnecessary-lambda-assignment
  src = ['a  b ', 'a b c', 'a b c d', '', 'x', words(175), words(176), 'a|b c',
         'a ' + 'z' * 1001, 'ok']
  tgt = ['x y', 'x y', 'x y', 'x', '   ', words(175), words(176), 'x y', 'x y', 'fine']
  kept_src, kept_tgt, removed = iwslt14.clean_corpus(src, tgt, ratio=1.5, min_len=1,
                                                     max_len=175)
  # 3/2 = 1.5 is not above the ratio; 4/2 is. Whitespace is normalized, | deleted.
  assert kept_src == ['a b', 'a b c', words(175), 'ab c', 'ok']
  assert kept_tgt == ['x y', 'x y', words(175), 'x y', 'fine']
  assert removed == {'ratio': 1, 'empty': 2, 'too_long': 1, 'long_word': 1}
  with pytest.raises(ValueError, match='parallel'):
    iwslt14.clean_corpus(['a'], ['b', 'c'])


def test_lowercase_is_perl_lc():
  # No final-sigma rule (Python's str.lower has one); İ has a two-character lowercase.
  assert iwslt14.lowercase(['ΟΔΟΣ Straße ÄRGER', '\u0130']) == ['οδοσ straße ärger', 'i\u0307']


def test_split_valid_takes_every_23rd_line():
  lines = [str(i) for i in range(1, 70)]
  train, valid = iwslt14.split_valid(lines)
  assert valid == ['23', '46', '69']
  assert train == [x for x in lines if x not in valid]


def test_learn_and_apply_bpe_round_trip(tmp_path):
  lines = ['low lower lowest', 'new newer newest', 'wide wider widest'] * 3
  code = iwslt14.learn_bpe(lines, 20)
  assert code.startswith('#version: 0.2\n')
  assert 0 < code.count('\n') - 1 <= 20
  (tmp_path / 'code').write_text(code, encoding='utf-8')
  segmented = iwslt14.apply_bpe(tmp_path / 'code', lines + ['unseen words'])
  assert any('@@ ' in s for s in segmented)
  assert [s.replace('@@ ', '') for s in segmented] == lines + ['unseen words']


# ---------------------------------------------------------------- prepare on a small release


def _train_pairs():
  """(raw de, raw en, expected de, expected en, reason) for the train file's text lines.

  The expectations follow from the script: tokenized, cleaned (reason says why a pair goes),
  lowercased.
  """
  pairs = [('<title>Titel Eins</title>', '<title>Title One</title>', 'titel eins', 'title one',
            None),
           ('<description>Eine Beschreibung.</description>',
            '<description>A description.</description>', 'eine beschreibung .',
            'a description .', None)]
  for i in range(60):
    pairs.append((f'Satz Nummer {i} ist hier.', f'Sentence number {i} is here.',
                  f'satz nummer {i} ist hier .', f'sentence number {i} is here .', None))
    if i == 10:
      pairs.append(('Ja.', 'Yes, of course.', None, None, 'ratio'))  # 2 vs 5 words
      pairs.append(('Ja.', 'Yes sir.', 'ja .', 'yes sir .', None))  # 2 vs 3 words: kept
    elif i == 20:
      pairs.append(('Wort ' * 175 + 'Ende.', 'Word.', None, None, 'too_long'))
    elif i == 30:
      pairs.append(('', 'Nothing in German.', None, None, 'empty'))
      pairs.append(('Leer.', '   ', None, None, 'empty'))
    elif i == 40:
      pairs.append(('Das ist’s.', 'That’s it.', 'das ist ’ s .', 'that ’ s it .', None))
  return pairs


def _train_file(pairs, side: int) -> str:
  meta = ['<url>http://www.ted.com/talks/1.html</url>', '<keywords>talks</keywords>',
          '<talkid>1</talkid>']
  return '\n'.join(meta + [p[side] for p in pairs]) + '\n'


def _xml_file(test_set: str, lang: str) -> str:
  short = test_set.rsplit('.', 1)[-1]
  segs = {'de': [f'Test {short} Satz eins.', 'Noch ein Satz, bitte.'],
          'en': [f'It’s {short} sentence one.', 'Another sentence, please.']}[lang]
  return '\n'.join(
      ['<?xml version="1.0" encoding="UTF-8"?>', '<mteval>',
       f'<srcset setid="iwslt2014-{short}" srclang="german">', '<doc docid="1" genre="lectures">',
       '<url>http://www.ted.com/talks/1.html</url>', '<talkid>1</talkid>',
       '<title>Ein Titel</title>']
      + [f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segs, 1)]
      + ['</doc>', '</srcset>', '</mteval>']) + '\n'


def _release_files() -> dict[str, str]:
  pairs = _train_pairs()
  files = {iwslt14.TRAIN_FILES['de']: _train_file(pairs, 0),
           iwslt14.TRAIN_FILES['en']: _train_file(pairs, 1)}
  for test_set in iwslt14.TEST_SETS:
    for lang in iwslt14.LANGS:
      files[iwslt14.xml_file(test_set, lang)] = _xml_file(test_set, lang)
  files['README'] = 'IWSLT 2014 evaluation campaign\n'
  return files


def _write_archive(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, 'w:gz') as tar:
    for name, text in _release_files().items():
      data = text.encode('utf-8')
      info = tarfile.TarInfo(f'de-en/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def _write_folder(folder: Path) -> Path:
  folder.mkdir(parents=True)
  for name, text in _release_files().items():
    (folder / name).write_text(text, encoding='utf-8')
  return folder


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('iwslt14')
  archive = _write_archive(root / 'manual' / 'de-en.tgz')
  counts = iwslt14.prepare(archive, root / 'out')
  return root, counts


def test_prepare_writes_fairseqs_layout(prepared):
  root, counts = prepared
  out = root / 'out'
  files = {str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()}
  splits = [f'{s}.{lang}' for s in iwslt14.SPLITS for lang in iwslt14.LANGS]
  assert files == ({f'tok/{f}' for f in splits} | {f'bpe10k/{f}' for f in splits}
                   | {'bpe10k/code', 'counts.json'})
  assert json.loads((out / 'counts.json').read_text()) == counts
  assert sorted(p.name for p in root.iterdir()) == ['manual', 'out']  # no partial folder left


def test_prepare_cleans_lowercases_and_splits_like_the_script(prepared):
  root, counts = prepared
  pairs = _train_pairs()
  kept = [(p[2], p[3]) for p in pairs if p[4] is None]
  valid = kept[22::23]
  train = [pair for i, pair in enumerate(kept, 1) if i % 23]
  for split, expected in (('train', train), ('valid', valid)):
    for side, lang in enumerate(iwslt14.LANGS):
      assert _lines(root / 'out' / 'tok' / f'{split}.{lang}') == [p[side] for p in expected]
  reasons = [p[4] for p in pairs if p[4]]
  assert counts['removed_by_cleaning'] == len(reasons) == 4
  assert counts['removed_by_reason'] == {'empty': 2, 'ratio': 1, 'too_long': 1}
  assert counts['train_lines_read'] == {'de': len(pairs) + 3, 'en': len(pairs) + 3}
  assert counts['train_tag_lines'] == {'de': 3, 'en': 3}
  assert counts['train_pairs_tokenized'] == len(pairs)
  assert (counts['train'], counts['valid']) == (len(train), len(valid)) == (len(kept) - 2, 2)


def test_prepare_concatenates_test_sets_in_fairseqs_order(prepared):
  root, counts = prepared
  order = ['dev2010', 'dev2012', 'tst2010', 'tst2011', 'tst2012']
  assert _lines(root / 'out' / 'tok' / 'test.de') == [
      line for short in order for line in (f'test {short} satz eins .',
                                           'noch ein satz , bitte .')]
  # ’ becomes ' in the XML (then &apos;), but stays ’ in the train text.
  assert _lines(root / 'out' / 'tok' / 'test.en') == [
      line for short in order for line in (f'it &apos;s {short} sentence one .',
                                           'another sentence , please .')]
  assert counts['test'] == 10
  assert list(counts['test_sets']) == list(iwslt14.TEST_SETS)


def test_prepare_bpe_files_decode_to_the_tokenized_files(prepared):
  root, counts = prepared
  code = (root / 'out' / 'bpe10k' / 'code').read_text(encoding='utf-8')
  assert code.startswith('#version: 0.2\n')
  assert counts['bpe_merges_learned'] == code.count('\n') - 1 > 0
  segmented = 0
  for split in iwslt14.SPLITS:
    for lang in iwslt14.LANGS:
      bpe = _lines(root / 'out' / 'bpe10k' / f'{split}.{lang}')
      segmented += sum('@@ ' in line for line in bpe)
      # fairseq's --remove-bpe: (line + ' ').replace('@@ ', '').rstrip()
      assert [(line + ' ').replace('@@ ', '').rstrip() for line in bpe] == _lines(
          root / 'out' / 'tok' / f'{split}.{lang}')
  assert segmented > 0
  # The code is learned on train.de followed by train.en, as the script's $TMP/train.en-de.
  train = [_lines(root / 'out' / 'tok' / f'train.{lang}') for lang in iwslt14.LANGS]
  assert code == iwslt14.learn_bpe(train[0] + train[1], iwslt14.BPE_MERGES)


def test_prepare_reads_the_extracted_folder_like_the_archive(prepared, tmp_path):
  root, _ = prepared
  manual = _write_folder(tmp_path / 'manual' / 'de-en').parent
  for source in (manual, manual / 'de-en'):
    out = tmp_path / f'out-{source.name}'
    iwslt14.prepare(source, out)
    for path in (root / 'out').rglob('*'):
      if path.is_file():
        assert (out / path.relative_to(root / 'out')).read_bytes() == path.read_bytes()


def test_missing_release_is_explained(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='de-en.tgz') as error:
    iwslt14.prepare(tmp_path / 'empty', tmp_path / 'out')
  assert iwslt14.DOWNLOAD_URL in str(error.value)
  folder = _write_folder(tmp_path / 'partial' / 'de-en')
  (folder / 'IWSLT14.TED.tst2011.de-en.en.xml').unlink()
  with pytest.raises(FileNotFoundError, match=r'IWSLT14\.TED\.tst2011\.de-en\.en\.xml'):
    iwslt14.prepare(tmp_path / 'partial', tmp_path / 'out')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    iwslt14.prepare(tmp_path / 'nowhere' / 'de-en.tgz', tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_interrupted_prepare_leaves_no_output(tmp_path, monkeypatch):
  archive = _write_archive(tmp_path / 'de-en.tgz')

  def fail(*args, **kwargs):
    raise RuntimeError('interrupted')

  monkeypatch.setattr(iwslt14, 'learn_bpe', fail)
  with pytest.raises(RuntimeError, match='interrupted'):
    iwslt14.prepare(archive, tmp_path / 'out')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['de-en.tgz']


def test_prepare_refuses_an_existing_out_dir(tmp_path):
  (tmp_path / 'out').mkdir()
  with pytest.raises(FileExistsError, match='already exists'):
    iwslt14.prepare(tmp_path / 'missing', tmp_path / 'out')


@pytest.mark.usefixtures('library_tempdir')  # TFDS's tmp…tfds folders (conftest.py)
def test_tfds_builder_yields_the_prepared_pairs(prepared, tmp_path):
  pytest.importorskip('tensorflow_datasets', reason='tensorflow-datasets is not installed; '
                      'the iwslt14 TFDS builder cannot be tested')
  pytest.importorskip('array_record', reason='array_record is not installed; TFDS cannot '
                      'write or read ArrayRecord files')
  pytest.importorskip('importlib_resources', reason='tensorflow-datasets 4.9.x needs '
                      'importlib_resources to prepare builders defined in a package')
  from data import tfds_source  # pylint: disable=g-import-not-at-top
  root, counts = prepared
  sources, _ = tfds_source.data_sources('iwslt14', data_dir=str(tmp_path / 'tfds'),
                                        manual_dir=str(root / 'manual'))
  for split in iwslt14.SPLITS:
    records = [(r['de'].decode('utf-8'), r['en'].decode('utf-8'))
               for r in tfds_source.iterate_records(sources[split])]
    assert records == iwslt14.read_pairs(root / 'out', split)
    assert len(records) == counts[split]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = tfds.builder('iwslt14', data_dir=str(tmp_path / 'tfds')).info
  assert info.supervised_keys == ('de', 'en')
  assert str(info.version) == '1.0.0'
