"""Data loaders through their real code paths, on tiny files in the exact real formats."""

import pickle

import numpy as np
import pytest
import torch

from per_core.data import (
    DataError,
    augment_crop_flip,
    batchify,
    image_batches,
    load_cifar,
    load_corpus,
    load_digits,
    load_word_corpus,
)


def test_digits_split_is_fixed_standardized_and_disjoint():
    a, b = load_digits(), load_digits()
    assert a.train_x.shape == (1438, 1, 8, 8) and a.val_x.shape == (359, 1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert abs(float(a.train_x.mean())) < 1e-5 and float(a.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    train_rows = {tuple(r) for r in a.train_x.flatten(1).tolist()}
    assert sum(tuple(r) in train_rows for r in a.val_x.flatten(1).tolist()) < 5  # (sklearn has a few duplicates)


def write_cifar(root, num_classes, n=6):
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if num_classes == 10 else ["train", "test"]
    key = b"labels" if num_classes == 10 else b"fine_labels"
    sub = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    sub.mkdir(parents=True)
    raw = {}
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, n).tolist()
        raw[name] = (data, labels)
        with (sub / name).open("wb") as f:
            pickle.dump({b"data": data, key: labels, b"batch_label": b"x"}, f)
    return raw


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_pickle_batches_load_through_the_real_path(tmp_path, num_classes):
    raw = write_cifar(tmp_path, num_classes)
    d = load_cifar(tmp_path, num_classes)
    n_train = 30 if num_classes == 10 else 6
    assert d.train_x.shape == (n_train, 3, 32, 32) and d.val_x.shape == (6, 3, 32, 32)
    first = "data_batch_1" if num_classes == 10 else "train"
    assert d.train_y[:6].tolist() == raw[first][1]
    # the channel layout is (R plane, G plane, B plane) of 32x32: undo the normalization and compare
    x = torch.from_numpy(np.concatenate([raw[k][0] for k in raw if k not in ("test_batch", "test")])).float() / 255
    x = x.view(-1, 3, 32, 32)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    torch.testing.assert_close(d.train_x * std + mean, x, atol=1e-5, rtol=0)


def test_missing_cifar_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"missing data_batch_1.*test_batch.*--data-dir"):
        load_cifar(tmp_path, 10)


def test_damaged_data_files_are_errors_naming_the_file(tmp_path):
    # before: "cannot reshape array of size 50 into shape (3,32,32)" and "0 tokens are too few for batch size 20",
    # neither naming the file
    write_cifar(tmp_path, 10)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with bad.open("wb") as f:
        pickle.dump({b"data": np.zeros((1, 50), dtype=np.uint8), b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: data of shape \(1, 50\) and 1 labels, not CIFAR's"):
        load_cifar(tmp_path, 10)
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text("" if split == "train" else " a b \n")
    with pytest.raises(DataError, match=r"ptb\.train\.txt is empty"):
        load_word_corpus(tmp_path, "ptb")
    # an audit: labels out of range were an IndexError in the first step; bytes that are no UTF-8 an error
    # naming neither the file nor the fix
    with bad.open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [3, 12]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: labels from 3 to 12, not CIFAR-10's 0 to 9"):
        load_cifar(tmp_path, 10)
    (tmp_path / "ptb.train.txt").write_bytes(b" a b \n" * 20_000 + b"\xff\xfe\n")  # past the decoder's first chunk
    with pytest.raises(DataError, match=r"ptb\.train\.txt: not UTF-8 text \(invalid start byte at byte 120000\)"):
        load_word_corpus(tmp_path, "ptb")


def test_augment_is_a_shifted_window_of_the_padded_image_or_its_mirror():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5) + 1
    out = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, a : a + 5, b : b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    # over many draws every offset and both flips occur
    outs = augment_crop_flip(x[:1].expand(400, -1, -1, -1), torch.Generator().manual_seed(1), pad=2)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 50


def test_image_batches_cover_each_sample_once_and_shard_by_rank():
    x, y = torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10)
    seen = torch.cat([yb for _, yb in image_batches(x, y, 4, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    shards = [torch.cat([yb for _, yb in image_batches(x, y, 4, generator=g[r], rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    # 3 ranks, batches of 6 over 10 samples: equal shares (2 + 2 + 2, then 1 + 1 + 1 of the last 4), so the
    # average of the ranks' mean losses is the batch mean; the one sample that does not divide is skipped
    g = [torch.Generator().manual_seed(0) for _ in range(3)]
    parts = [[yb for _, yb in image_batches(x, y, 6, generator=g[r], rank=r, world_size=3)] for r in range(3)]
    assert [[len(b) for b in p] for p in parts] == [[2, 1]] * 3
    assert len(set(torch.cat([torch.cat(p) for p in parts]).tolist())) == 9
    with pytest.raises(ValueError, match="not divisible by 3 ranks"):
        next(image_batches(x, y, 4, rank=0, world_size=3))


def test_wikitext2_keeps_blank_lines_as_eos_like_the_standard_loader(tmp_path):
    text = " \n = Valkyria Chronicles = \n \n Senjō no Valkyria 3 : <unk> Chronicles \n"
    for split in ("train", "valid", "test"):
        (tmp_path / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    d = load_word_corpus(tmp_path, "wikitext2")
    words = [d.vocab[i] for i in d.train.tolist()]
    # pytorch/examples word_language_model: line.split() + ['<eos>'] for every line, blank ones included
    expected = [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]
    assert words == expected and words[:2] == ["<eos>", "="]
    assert d.valid.tolist() == d.train.tolist()


def test_word_corpora_break_lines_where_the_standard_loader_does(tmp_path):
    # a reviewer's case: str.splitlines also broke at \x0c and \u2028 (two extra <eos>); iterating over the file, as
    # pytorch/examples does, breaks only at \n, \r\n and \r
    text = " cat\x0cdog \u2028 sat\r\n the\x85end \r mat \n"
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(text, encoding="utf-8", newline="")
    d = load_word_corpus(tmp_path, "ptb")
    reference = []
    with open(tmp_path / "ptb.train.txt", encoding="utf8") as f:  # word_language_model/data.py, Corpus.tokenize
        for line in f:
            reference += [*line.split(), "<eos>"]
    expected = ["cat", "dog", "sat", "<eos>", "the", "end", "<eos>", "mat", "<eos>"]
    assert [d.vocab[i] for i in d.train.tolist()] == reference == expected


def test_word_corpora_from_local_files(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" the cat sat <unk> \n the dog \n")
    (tmp_path / "ptb.valid.txt").write_text(" the cat \n")
    (tmp_path / "ptb.test.txt").write_text(" a dog \n")
    d = load_word_corpus(tmp_path, "ptb")
    words = [d.vocab[i] for i in d.train.tolist()]
    assert words == ["the", "cat", "sat", "<unk>", "<eos>", "the", "dog", "<eos>"]
    assert [d.vocab[i] for i in d.test.tolist()] == ["<unk>", "dog", "<eos>"]  # 'a' is out of vocabulary
    with pytest.raises(DataError, match=r"wiki\.train\.tokens"):
        load_word_corpus(tmp_path, "wikitext2")


def test_embedded_corpus_and_batchify():
    d = load_corpus()
    assert d.train.numel() > 50_000 and d.valid.numel() > 5_000 and d.test.numel() > 5_000
    assert d.vocab[int(d.train[-1])] == "<eos>" and "<unk>" in d.vocab
    b = batchify(torch.arange(10), 3)
    assert b.shape == (3, 3) and b[:, 1].tolist() == [3, 4, 5]  # column = one contiguous stream
    assert torch.equal(batchify(torch.arange(10), np.int64(3)), b)  # a notebook's numpy integer
    x, y = torch.zeros(6, 1, 2, 2), torch.arange(6)
    assert [len(yb) for _, yb in image_batches(x, y, np.int64(4))] == [4, 2]
    assert augment_crop_flip(x, torch.Generator(), pad=np.int64(1)).shape == x.shape


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: batchify(torch.arange(10), 0), ValueError, "batch_size must be a positive integer, got 0"),
        (lambda: batchify(torch.arange(10), -2), ValueError, "batch_size must be a positive integer"),
        (lambda: batchify(torch.arange(10), 2.0), ValueError, "batch_size must be a positive integer"),
        (lambda: batchify(torch.zeros(2, 5), 2), ValueError, r"ids must be a token stream, .* got shape \(2, 5\)"),
        (lambda: batchify([1, 2, 3, 4], 2), ValueError, "ids must be a token stream.*got list"),
        (lambda: batchify(torch.arange(3), 2), ValueError, "too few for batch size 2"),
        (lambda: augment_crop_flip(torch.zeros(3, 8, 8), torch.Generator()), ValueError, r"\(N, C, H, W\), got shape"),
        (lambda: augment_crop_flip(torch.zeros(2, 3, 8, 8), torch.Generator(), pad=-1), ValueError, "pad must be"),
        (lambda: augment_crop_flip(torch.zeros(2, 3, 8, 8), torch.Generator(), pad=1.5), ValueError, "pad must be"),
        (lambda: augment_crop_flip(torch.zeros(2, 3, 8, 8), 0), TypeError, "generator must be a torch.Generator"),
        (lambda: next(image_batches(torch.zeros(4, 1), torch.zeros(4), 0)), ValueError, "batch_size must be"),
        (lambda: next(image_batches(torch.zeros(4, 1), torch.zeros(4), 2, rank=2, world_size=2)), ValueError, "rank"),
        (lambda: next(image_batches(torch.zeros(4, 1), torch.zeros(3), 2)), ValueError, "same number of samples"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_expected_form(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_augment_with_zero_padding_only_flips():
    x = torch.randn(50, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    out = augment_crop_flip(x, torch.Generator().manual_seed(3), pad=0)
    assert all(torch.equal(o, a) or torch.equal(o, a.flip(2)) for o, a in zip(out, x, strict=True))
