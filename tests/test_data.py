"""Corpora, lookup, encoding and the truncated-BPTT layout."""

import dataclasses
import hashlib
import io
import urllib.error
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from study import config, data
from study.config import DataConfig, ModelConfig
from study.model import CharLM


def write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_text_is_read_exactly_as_stored_crlf_and_bom_kept(tmp_path):
    raw = "\ufeffline one\r\nline two\n\u00e9t\u00e9\r\n".encode()
    p = write(tmp_path, "t.txt", raw)
    cfg = config.from_dict({"data": {"path": str(p), "splits": [0.5, 0.25, 0.25]}})
    c = data.load_corpus(cfg.data)
    assert c.decode(c.ids) == raw.decode("utf-8")
    assert "\r" in c.vocab and "\ufeff" in c.vocab
    assert c.vocab == "".join(sorted(set(raw.decode())))
    assert c.name == "t"  # your own file is labelled by its name


def test_non_utf8_file_gets_one_clear_error(tmp_path):
    p = write(tmp_path, "latin1.txt", "caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(data.DataError, match=r"not UTF-8 text: byte 0xe9 at offset 3"):
        data.load_corpus(DataConfig(path=str(p)))


def test_empty_file_gets_one_clear_error(tmp_path):
    p = write(tmp_path, "empty.txt", b"")
    with pytest.raises(data.DataError, match="is empty"):
        data.load_corpus(DataConfig(path=str(p)))


def test_lookup_order_env_then_data_dir(tmp_path, monkeypatch):
    env_dir, proj = tmp_path / "env", tmp_path / "proj"
    (env_dir).mkdir()
    (proj / "data").mkdir(parents=True)
    (env_dir / "warpeace_input.txt").write_text("from env")
    (proj / "data" / "warpeace_input.txt").write_text("from data/")
    monkeypatch.setattr(data, "PROJECT_ROOT", proj)
    monkeypatch.setenv("STUDY_DATA_DIR", str(env_dir))
    assert data.locate("warpeace") == env_dir / "warpeace_input.txt"
    monkeypatch.delenv("STUDY_DATA_DIR")
    assert data.locate("warpeace") == proj / "data" / "warpeace_input.txt"


def test_missing_corpus_offline_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("STUDY_DATA_DIR", str(tmp_path / "nowhere"))

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DataError) as e:
        data.locate("linux")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "linux_input.txt") in msg  # $STUDY_DATA_DIR
    assert str(tmp_path / "data" / "linux_input.txt") in msg  # data/
    assert data.CORPORA["linux"].url in msg and "network unreachable" in msg  # download
    assert "STUDY_DATA_DIR" in msg


def serve(monkeypatch, tmp_path, content: bytes) -> None:
    """Stand-in for the network: every urlopen serves `content` (from a file)."""
    src = tmp_path / "served.bin"
    src.write_bytes(content)
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda *a, **k: io.BytesIO(src.read_bytes()))


@pytest.fixture
def no_local_copies(tmp_path, monkeypatch):
    """A project without data/ and no $STUDY_DATA_DIR: corpora must be downloaded."""
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path / "proj")
    monkeypatch.delenv("STUDY_DATA_DIR", raising=False)
    return tmp_path / "proj" / "data"


def known(monkeypatch, name, **changes):
    monkeypatch.setitem(data.CORPORA, name, dataclasses.replace(data.CORPORA[name], **changes))
    return data.CORPORA[name]


def test_download_with_the_wrong_digest_is_refused(tmp_path, monkeypatch, no_local_copies):
    serve(monkeypatch, tmp_path, b"tampered")
    with pytest.raises(data.DataError) as e:
        data.locate("warpeace")
    msg = str(e.value)
    assert hashlib.sha256(b"tampered").hexdigest() in msg  # what came
    assert data.CORPORA["warpeace"].sha256[0] in msg  # what was expected
    assert list(no_local_copies.iterdir()) == []  # no file, no .part, no pin


def test_download_with_a_known_digest_is_accepted(tmp_path, monkeypatch, no_local_copies):
    body = b"War and Peace, abridged\n"
    known(monkeypatch, "warpeace", sha256=("0" * 64, hashlib.sha256(body).hexdigest()))
    serve(monkeypatch, tmp_path, body)
    assert data.locate("warpeace") == no_local_copies / "warpeace_input.txt"
    assert (no_local_copies / "warpeace_input.txt").read_bytes() == body
    assert [p.name for p in no_local_copies.iterdir()] == ["warpeace_input.txt"]  # no pin


def test_linux_download_of_the_wrong_size_is_refused(tmp_path, monkeypatch,
                                                     no_local_copies):
    serve(monkeypatch, tmp_path, b"int main(void) { return 0; }\n")
    with pytest.raises(data.DataError) as e:
        data.locate("linux")
    msg = str(e.value)
    assert hashlib.sha256(b"int main(void) { return 0; }\n").hexdigest() in msg
    assert data.CORPORA["linux"].sha256[0] in msg and f"{6_206_996} characters" in msg
    assert list(no_local_copies.iterdir()) == []


def test_linux_download_of_the_right_size_is_pinned_and_checked_later(
        tmp_path, monkeypatch, capsys, no_local_copies):
    body = "/* caf\u00e9 */\nint x;\n" * 50  # counted in characters, not bytes
    known(monkeypatch, "linux", chars=len(body))
    serve(monkeypatch, tmp_path, body.encode())
    digest = hashlib.sha256(body.encode()).hexdigest()
    path = data.locate("linux")
    pin = no_local_copies / "linux_input.txt.sha256"
    assert path.read_text() == body and pin.read_text().split()[0] == digest
    assert digest in capsys.readouterr().out  # the digest is printed
    c = data.load_corpus(DataConfig(corpus="linux"))  # the pinned file is used quietly
    assert c.sha256 == digest and c.decode(c.ids) == body
    assert "warning" not in capsys.readouterr().err
    path.write_text(body.replace("x", "y"))  # changed after it was pinned
    with pytest.raises(data.DataError) as e:
        data.load_corpus(DataConfig(corpus="linux"))
    msg = str(e.value)
    assert digest in msg and data.sha256_of(path) in msg and "delete both" in msg


def test_a_local_copy_of_unknown_digest_gets_one_warning(tmp_path, monkeypatch, capsys):
    (tmp_path / "warpeace_input.txt").write_text("my own War and Peace\n" * 50)
    monkeypatch.setenv("STUDY_DATA_DIR", str(tmp_path))
    c = data.load_corpus(DataConfig(corpus="warpeace"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and c.sha256 in err
    known(monkeypatch, "warpeace", sha256=(c.sha256,))
    data.load_corpus(DataConfig(corpus="warpeace"))
    assert capsys.readouterr().err == ""


def test_data_path_to_a_directory_or_nothing_says_which(tmp_path):
    with pytest.raises(data.DataError, match="is a directory, not a file"):
        data.load_corpus(DataConfig(path=str(tmp_path)))
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_corpus(DataConfig(path=str(tmp_path / "missing.txt")))


def test_encoding_is_cached_by_checksum(tmp_path):
    p = write(tmp_path, "t.txt", b"abcabcabd" * 200)
    cache = tmp_path / "cache"
    c1 = data.load_corpus(DataConfig(path=str(p)), cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and c1.sha256 in files[0].name
    payload = torch.load(files[0], weights_only=True)  # tensors and plain types only
    assert payload["source_sha256"] == c1.sha256 and len(payload["checksum"]) == 64
    c2 = data.load_corpus(DataConfig(path=str(p)), cache)
    assert torch.equal(c1.ids, c2.ids) and c1.vocab == c2.vocab
    p.write_bytes(b"xyz" * 600)  # new content, new key
    c3 = data.load_corpus(DataConfig(path=str(p)), cache)
    assert c3.vocab == "xyz" and len(list(cache.iterdir())) == 2


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tampered", "old format",
                                    "runs code"])
def test_a_bad_cache_is_rebuilt_with_one_warning(tmp_path, capsys, damage):
    p = write(tmp_path, "t.txt", "abc\u00e9abd\n".encode() * 300)
    cache = tmp_path / "cache"
    cfg = DataConfig(path=str(p), max_chars=2000)
    want = data.load_corpus(cfg, cache)
    (f,) = cache.iterdir()
    good = f.read_bytes()
    marker = tmp_path / "marker"
    if damage == "truncated":
        f.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00garbage" * 100)
    else:
        payload = torch.load(f, weights_only=True)
        if damage == "tampered":  # a valid file whose ids do not match their checksum
            payload["ids"] = payload["ids"].flip(0)
        elif damage == "old format":
            payload = {"vocab": payload["vocab"], "ids": payload["ids"]}
        else:
            payload["vocab"] = RunsCode(marker)
        torch.save(payload, f)
    capsys.readouterr()
    got = data.load_corpus(cfg, cache)
    err = capsys.readouterr().err
    assert torch.equal(got.ids, want.ids) and got.vocab == want.vocab
    assert err.count("\n") == 1 and err.startswith("warning: ") and str(f) in err
    assert f.read_bytes() == good  # rewritten as it was first written
    assert data.load_corpus(cfg, cache).vocab == want.vocab
    assert capsys.readouterr().err == ""  # and used quietly from then on
    assert not marker.exists()
    assert [x.name for x in cache.iterdir()] == [f.name]  # no temporary files left


def test_splits_are_contiguous_with_the_papers_fractions(tmp_path):
    p = write(tmp_path, "t.txt", bytes(range(97, 123)) * 400)
    c = data.load_corpus(DataConfig(path=str(p), splits=[0.8, 0.1, 0.1]))
    n = len(c.ids)
    assert [len(c.splits[k]) for k in ("train", "val", "test")] == \
        [int(0.8 * n), int(0.1 * n), n - int(0.8 * n) - int(0.1 * n)]
    assert torch.equal(torch.cat(list(c.splits.values())), c.ids)
    assert data.CORPORA["warpeace"].splits == (0.8, 0.1, 0.1)
    assert data.CORPORA["linux"].splits == (0.9, 0.05, 0.05)


def test_streams_tile_the_split_exactly():
    ids = torch.arange(1003)
    x, y = data.streams(ids, batch_size=10)
    L = (1003 - 1) // 10
    assert x.shape == y.shape == (L, 10)
    assert torch.equal(x.t().reshape(-1), ids[:10 * L])  # streams laid end to end
    assert torch.equal(y.t().reshape(-1), ids[1:10 * L + 1])  # targets: next character
    with pytest.raises(data.DataError, match="too few"):
        data.streams(torch.arange(5), batch_size=10)


@pytest.mark.parametrize("length,k1,k2", [(10, 3, 3), (10, 2, 5), (7, 7, 7), (9, 1, 4)])
def test_windows_follow_tbptt_k1_k2(length, k1, k2):
    ws = data.windows(length, k1, k2)
    # the new steps of the windows tile the epoch, k1 at a time
    assert [w.new for w in ws] == list(range(0, length, k1))
    assert ws[-1].end == length
    for a, b in zip(ws, ws[1:], strict=False):
        assert a.end == b.new and a.carry == b.start  # the carried state starts the next
    for w in ws:
        assert w.start == max(0, w.new - (k2 - k1))  # back-propagate k2 steps
        assert w.end - w.start <= k2 and w.start <= w.carry <= w.end
    with pytest.raises(ValueError):
        data.windows(10, 4, 3)


def _tiny_model(cell="lstm"):
    torch.manual_seed(0)
    return CharLM(7, ModelConfig(cell=cell, hidden_size=8, num_layers=2, init_range=0.5))


def test_carried_state_is_detached_and_equals_the_state_at_carry():
    model = _tiny_model()
    x = torch.randint(0, 7, (12, 3))
    _, final, carry = model(x, carry_at=5)
    assert all(not s.requires_grad and not c.requires_grad for s, c in carry)
    _, final5, _ = model(x[:5])
    for (s1, c1), (s2, c2) in zip(carry, final5, strict=True):
        torch.testing.assert_close(s1, s2.detach())
        torch.testing.assert_close(c1, c2.detach())
    # continuing from the carried state gives the same final state as one long pass
    _, final_rest, _ = model(x[5:], carry)
    for (s1, _), (s2, _) in zip(final_rest, final, strict=True):
        torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_k1_lt_k2_backpropagates_exactly_k2_steps(cell):
    """In a window [start, end) with loss on [new, end), the loss reaches the inputs of
    the whole window and nothing before it (the entering state is detached)."""
    model = _tiny_model(cell)
    emb = torch.nn.Embedding(7, 7)  # a differentiable stand-in for the inputs
    x = torch.randint(0, 7, (20, 2))
    w = data.windows(20, k1=3, k2=8)[4]  # new = 12, start = 7, end = 15
    assert (w.start, w.new, w.end) == (7, 12, 15)
    _, state, _ = model(x[:w.start])
    state = [(s.detach(), c.detach() if c is not None else None) for s, c in state]
    model.embedding = emb
    for layer in model.layers[:1]:
        layer.onehot = False
    inp = emb(x).detach().requires_grad_()
    # run the window with dense inputs so each step's input has its own gradient
    h = inp[w.start:w.end]
    for layer, st in zip(model.layers, state, strict=True):
        S, _ = layer(h, st)
        h = S[1:, :, :layer.cell.H]
    logits = model.decoder(h)[w.new - w.start:]
    logits.sum().backward()
    reach = inp.grad.abs().sum((1, 2))
    assert (reach[w.start:w.end] > 0).all()
    assert (reach[:w.start] == 0).all() and (reach[w.end:] == 0).all()


@settings(max_examples=200, deadline=None)
@given(hs.text(min_size=1, max_size=300))
def test_decode_inverts_encode_on_any_text(text):
    """decode (one numpy gather) gives back any text exactly, from a tensor of either id
    dtype, an array or a list; out-of-range ids are refused."""
    from study.data import _encode, decode

    vocab, ids = _encode(text)
    assert decode(vocab, ids) == text
    assert decode(vocab, ids.to(torch.int32).numpy()) == text
    assert decode(vocab, ids.tolist()) == text
    with pytest.raises(IndexError):
        decode(vocab, [len(vocab)])
