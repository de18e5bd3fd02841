"""The book's API (`from alexnet_lab import d2l`): the chapter's code runs as written, train_ch6
does what the book's loop does, and the Animator draws in place in Jupyter or to a file in a terminal.
"""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from alexnet_lab import d2l
from alexnet_lab.engine.builders import splits_for
from alexnet_lab.engine.config import make_config
from alexnet_lab.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BOOK_IMPORT = "from d2l import torch as d2l"


pytestmark = pytest.mark.usefixtures("one_thread")


def chapter_path() -> Path:
    """The spec next to the repository (as in CI: ../shared/spec), else the committed copy."""
    shared = REPO.parent / "shared" / "spec" / "alexnet-chapter.md"
    return shared if shared.is_file() else REPO / "tests" / "data" / "alexnet-chapter.md"


def chapter_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(code, printed output lines) of every ```python block; output is the 4-space-indented lines after it."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            j = lines.index("```", i + 1)
            code = "\n".join(lines[i + 1:j])
            k = j + 1
            while k < len(lines) and lines[k].startswith("    "):
                k += 1
            blocks.append((code, [line[4:] for line in lines[j + 1:k]]))
            i = k
        else:
            i += 1
    return blocks


def test_the_chapters_code_runs_unchanged_but_for_its_import(tmp_path):
    blocks = chapter_blocks(chapter_path().read_text(encoding="utf-8"))
    code = "\n".join(c for c, _ in blocks)
    assert code.count(BOOK_IMPORT) == 1
    script = tmp_path / "chapter.py"
    script.write_text(code.replace(BOOK_IMPORT, "from alexnet_lab import d2l"), encoding="utf-8")
    figure = tmp_path / "curves.svg"
    # Shrink only the data and the epochs: AlexNet at 224 in fp32 takes ~3 s per batch of 128 here.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "ALEXNET_LAB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ALEXNET_LAB_D2L_LIMIT": "64", "ALEXNET_LAB_D2L_EPOCHS": "1", "ALEXNET_LAB_D2L_FIGURE": str(figure)}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.splitlines()

    shapes = [out for _, outs in blocks for out in outs if "output shape" in out]
    assert len(shapes) == 21
    assert printed[:len(shapes)] == shapes  # every layer's shape line, character for character

    device = d2l.try_gpu()
    assert printed[len(shapes)] == f"training on {device}"
    book_final = [out for _, outs in blocks for out in outs if "output shape" not in out]
    assert len(book_final) == 2 and len(printed) == len(shapes) + 3
    for book_line, line in zip(book_final, printed[len(shapes) + 1:]):
        pattern = re.sub(r"\d+", r"\\d+", re.escape(book_line)).replace(r"cuda:\d+", "(cpu|cuda:\\d+)")
        assert re.fullmatch(pattern, line), (book_line, line)
    assert str(device) in printed[-1]

    assert figure.read_text().lstrip().startswith("<?xml") and "<svg" in figure.read_text()
    assert result.stderr.count(f"figure saved to {figure}") == 1
    assert "\r" not in result.stderr  # stderr is a pipe (like an IDE's run window): points, no progress bar


def book_lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def book_train_ch6(net, train_iter, test_iter, num_epochs, lr, device, points):
    """The book's train_ch6 transcribed (per-step float reads), recording the Animator's points."""
    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 (the book's test)
            nn.init.xavier_uniform_(m.weight)
    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    num_batches = len(train_iter)
    for epoch in range(num_epochs):
        metric = [0.0, 0.0, 0.0]
        net.train()
        for i, (X, y) in enumerate(train_iter):
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                correct = float((y_hat.argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum())
                metric = [a + float(b) for a, b in zip(metric, (l * X.shape[0], correct, X.shape[0]))]
            train_l, train_acc = metric[0] / metric[2], metric[1] / metric[2]
            if (i + 1) % (num_batches // 5) == 0 or i == num_batches - 1:
                points.append((epoch + (i + 1) / num_batches, (train_l, train_acc, None)))
        net.eval()
        hits = total = 0.0
        with torch.no_grad():
            for X, y in test_iter:
                hits += float((net(X).argmax(axis=1) == y).sum())
                total += y.numel()
        test_acc = hits / total
        points.append((epoch + 1, (None, None, test_acc)))
    return f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}"


def synthetic_batches(n_batches, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n_batches, batch), generator=gen)
    # Class-dependent brightness, so that the net can learn something in a few steps.
    images = torch.rand(n_batches, batch, 1, 28, 28, generator=gen) * 0.5 + labels.view(n_batches, batch, 1, 1, 1) / 20
    return list(zip(images, labels))


def test_train_ch6_follows_the_books_loop(monkeypatch, capsys):
    monkeypatch.delenv("ALEXNET_LAB_D2L_EPOCHS", raising=False)
    train, test = synthetic_batches(10, 16, 0), synthetic_batches(3, 16, 1)
    points = []

    class Recording(d2l.Animator):
        def __init__(self, **kwargs):
            assert kwargs == {"xlabel": "epoch", "xlim": [1, 2], "legend": ["train loss", "train acc", "test acc"]}
            super().__init__(**kwargs)

        def add(self, x, y):  # records only: drawing is tested on its own below
            points.append((x, y))

    monkeypatch.setattr(d2l, "Animator", Recording)
    torch.manual_seed(0)
    net = book_lenet()
    d2l.train_ch6(net, train, test, 2, 0.9, torch.device("cpu"))
    printed = capsys.readouterr().out.splitlines()

    torch.manual_seed(0)
    reference_net, reference_points = book_lenet(), []
    book_line = book_train_ch6(reference_net, train, test, 2, 0.9, torch.device("cpu"), reference_points)

    assert printed[0] == "training on cpu"
    assert printed[1] == book_line
    assert re.fullmatch(r"\d+\.\d examples/sec on cpu", printed[2])
    assert [x for x, _ in points] == pytest.approx([x for x, _ in reference_points])
    assert len(points) == 2 * (5 + 1)  # five training points and one test point per epoch
    for (_, got), (_, want) in zip(points, reference_points):
        assert [g is None for g in got] == [w is None for w in want]
        assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None], abs=1e-6)
    for p, q in zip(net.parameters(), reference_net.parameters()):
        torch.testing.assert_close(p, q)


def test_epochs_can_be_shrunk_by_environment(monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_D2L_EPOCHS", "1")
    points = []
    monkeypatch.setattr(d2l.Animator, "add", lambda self, x, y: points.append(x))
    d2l.train_ch6(book_lenet(), synthetic_batches(3, 4, 0), synthetic_batches(1, 4, 1), 10, 0.1, "cpu")
    assert points == pytest.approx([1 / 3, 2 / 3, 1.0, 1])  # under 5 batches: a point per batch
    monkeypatch.setenv("ALEXNET_LAB_D2L_EPOCHS", "zero")
    with pytest.raises(UserError, match="ALEXNET_LAB_D2L_EPOCHS"):
        d2l.train_ch6(book_lenet(), synthetic_batches(1, 4, 0), synthetic_batches(1, 4, 1), 10, 0.1, "cpu")


def test_load_data_fashion_mnist_gives_the_books_batches(monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_D2L_LIMIT", "300")
    raw = splits_for(make_config("d2l", limit_train=300, limit_test=300))
    train_iter, test_iter = d2l.load_data_fashion_mnist(128)
    assert len(train_iter) == len(test_iter) == 3
    test_batches = list(test_iter)
    assert [tuple(x.shape) for x, _ in test_batches] == [(128, 1, 28, 28), (128, 1, 28, 28), (44, 1, 28, 28)]
    images = torch.cat([x for x, _ in test_batches])
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, raw.test_images.unsqueeze(1).float() / 255)  # ToTensor, in order
    assert torch.equal(torch.cat([y for _, y in test_batches]), raw.test_labels)
    epochs = [torch.cat([y for _, y in train_iter]) for _ in range(2)]
    for labels in epochs:  # every epoch is a permutation of the training set
        assert torch.equal(labels.sort().values, raw.train_labels.sort().values)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch

    big_train, _ = d2l.load_data_fashion_mnist(100, resize=224)
    x, y = next(iter(big_train))
    assert x.shape == (100, 1, 224, 224) and y.dtype == torch.int64 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert train_iter.to("cpu") is train_iter


def test_limit_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_D2L_LIMIT", "-5")
    with pytest.raises(UserError, match="ALEXNET_LAB_D2L_LIMIT"):
        d2l.load_data_fashion_mnist(32)


def test_animator_updates_the_figure_in_place_in_a_notebook(monkeypatch, tmp_path, capsys):
    import matplotlib.pyplot as plt
    plt.close(plt.figure())  # pyplot settles its backend now, before it could see the fake IPython
    calls = []
    display = types.SimpleNamespace(display=lambda fig: calls.append(("display", fig)),
                                    clear_output=lambda wait=False: calls.append(("clear", wait)))
    shell = types.SimpleNamespace(kernel=object())  # what the shell of a Jupyter kernel has
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell, display=display))
    monkeypatch.chdir(tmp_path)
    animator = d2l.Animator(xlabel="epoch", xlim=[1, 2], legend=["train loss", "train acc", "test acc"])
    animator.add(0.5, (2.0, 0.3, None))
    animator.add(1.0, (None, None, 0.4))
    assert calls == [("display", animator.fig), ("clear", True)] * 2
    assert animator.Y == [[2.0], [0.3], [0.4]]
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err == ""  # no file, no text
    plt.close(animator.fig)


def test_animator_in_a_terminal_prints_points_and_saves_the_figure(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "IPython", None)  # not installed
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALEXNET_LAB_D2L_FIGURE", raising=False)
    animator = d2l.Animator(xlabel="epoch", legend=["train loss", "train acc", "test acc"])
    animator.add(0.2, (2.31, 0.1, None))
    animator.add(1, (None, None, 0.45))
    err = capsys.readouterr().err
    path = tmp_path / d2l.DEFAULT_FIGURE
    assert err.count(f"figure saved to {path}") == 1
    assert "epoch 0.20: train loss 2.310, train acc 0.100" in err and "epoch 1.00: test acc 0.450" in err
    svg = path.read_text()
    assert "<svg" in svg and svg.count("<path") > 3  # axes, grid and the two series


def test_the_small_helpers_match_the_book():
    y_hat = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    y = torch.tensor([1, 1, 1])
    assert d2l.accuracy(y_hat, y) == 2.0  # a count of correct predictions, as a float
    acc = d2l.Accumulator(2)
    acc.add(torch.tensor(1.5), 2)
    acc.add(0.5, torch.tensor(3))
    assert (acc[0], acc[1]) == (2.0, 5.0)
    acc.reset()
    assert acc[0] == 0.0
    timer = d2l.Timer()
    timer.stop()
    timer.start()
    timer.stop()
    assert len(timer.times) == 2 and timer.sum() == pytest.approx(sum(timer.times))
    assert timer.cumsum()[-1] == pytest.approx(timer.sum()) and timer.avg() == pytest.approx(timer.sum() / 2)
    count = torch.cuda.device_count()
    assert d2l.try_gpu(count) == torch.device("cpu")
    assert d2l.try_gpu() == (torch.device("cuda:0") if count else torch.device("cpu"))
    assert d2l.try_all_gpus() == ([torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")])
