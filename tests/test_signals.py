"""Signals as a cluster sends them: SIGTERM to torchrun (2 gloo ranks) or to a whole process group (SLURM,
a terminal's Ctrl-C) mid-epoch, then the same command resumes to weights bit-identical to an uninterrupted
run; loader workers never die of the job's signals; rank 0 alone decides to resume; a second Ctrl-C stops at
once; the online k-NN monitor and TensorBoard under 2 ranks."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vicregl_cli.interrupts import TrainingInterrupted, ignore_stop_signals
from vicregl_cli.pretrain.config import PretrainConfig, load_config, parse_assignments

torch.set_num_threads(1)
EPOCHS, STEPS_PER_EPOCH = 2, 6  # conftest's `synthetic`: 48 images, batch 8 (4 per rank on 2 ranks)
TOTAL = EPOCHS * STEPS_PER_EPOCH
PROGRESS = re.compile(r"^pretrain: (\d+)/")


def pairs(synthetic: Path, out: Path, **changes: str) -> list[str]:
    """The demo preset, narrowed: 2 epochs of 6 steps, 2 loader workers, a checkpoint only at the end,
    a progress line per step (KEY=VALUE, the same for the CLI and in process)."""
    values = dict(data=str(synthetic / "train"), out=str(out), batch_size="8",
                  epochs=str(EPOCHS), warmup_epochs="1", mlp="64-64", maps_mlp="32-32", num_workers="2",
                  checkpoint_every=str(EPOCHS), log_every="1")  # fmt: skip
    values.update(changes)
    return [f"{key}={value}" for key, value in values.items()]


def config_of(assignments: list[str]) -> PretrainConfig:
    return load_config("demo", parse_assignments(assignments))


def cli(*arguments: str) -> list[str]:
    return ["-m", "vicregl_cli.cli", "pretrain", "--config", "demo", "--device", "cpu", *arguments]


def weights_and_momenta(run: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run / "checkpoint.pth", weights_only=True)
    tensors = {f"model.{key}": value for key, value in saved["model"].items()}
    for index, state in saved["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{key}": value for key, value in state.items()})
    return tensors


def assert_bit_identical(expected_run: Path, run: Path) -> float:
    """Every weight and optimiser state of the two final checkpoints equal -> the max abs difference."""
    expected, actual = weights_and_momenta(expected_run), weights_and_momenta(run)
    assert expected.keys() == actual.keys() and len(expected) > 50
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key
    return max(float((value.double() - actual[key].double()).abs().max()) for key, value in expected.items())


@pytest.fixture
def ctrl_c_reaches_us():
    """Python's own Ctrl-C handler, also where the suite runs in the background (SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _ctrl_c_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background suite's SIG_IGN would be inherited


def stop_message(name: str, step: int, run: Path, how: str) -> str:
    saved_to = run / "checkpoint.pth"
    return f"stopped by {name} after step {step}; checkpoint saved to {saved_to}; run {how} to resume"


def launch_and_signal(command: list[str], signum: int, at_step: int, to_group: bool) -> tuple[int, str]:
    """Run `command` in a session of its own; once it reports step `at_step`, send `signum` to it (or to its
    process group: the main process and its loader workers) -> (exit code, output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True,
                               preexec_fn=_ctrl_c_as_in_a_terminal)  # fmt: skip
    watchdog = threading.Timer(240, process.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in process.stdout:
            lines.append(line)
            step = PROGRESS.match(line)
            if not sent and step and int(step.group(1)) >= at_step:
                (os.killpg if to_group else os.kill)(process.pid, signum)
                sent = True
        code = process.wait()
    finally:
        watchdog.cancel()
    assert sent, "".join(lines)
    return code, "".join(lines)


# ---------------------------------------------------------------- loader workers


def test_loader_workers_ignore_the_signals_meant_for_the_job():
    loader = torch.utils.data.DataLoader(range(40), batch_size=4, num_workers=2, persistent_workers=True,
                                         worker_init_fn=ignore_stop_signals)  # fmt: skip
    before = set(multiprocessing.active_children())
    batches = iter(loader)
    seen = [next(batches).tolist(), next(batches).tolist()]  # one from each worker: both are set up
    workers = [child for child in multiprocessing.active_children() if child not in before]
    assert len(workers) == 2
    for name in ("TERM", "USR1", "USR2", "INT"):  # from another process, as SLURM / torchrun / a terminal
        subprocess.run(["kill", "-s", name, *(str(worker.pid) for worker in workers)], check=True)
    time.sleep(0.5)  # a worker that died of one of them would make the loader raise below
    assert all(worker.is_alive() for worker in workers)
    seen += [batch.tolist() for batch in batches]
    assert sum(seen, []) == list(range(40))
    for worker in workers:  # the main process can still end them (multiprocessing's terminate at exit)
        worker.terminate()
        worker.join(timeout=30)
    assert [worker.exitcode for worker in workers] == [0, 0]


# ---------------------------------------------------------------- one process, signalled as a group


@pytest.fixture(scope="module")
def one_process_reference(synthetic, tmp_path_factory) -> Path:
    from vicregl_cli.pretrain.loop import train

    run = tmp_path_factory.mktemp("one") / "reference"
    result = train(config_of(pairs(synthetic, run)), device="cpu", command_line=["vicregl"])
    assert (result.start_step, result.end_step, result.total_steps) == (0, TOTAL, TOTAL)
    return run


def test_sigterm_to_the_process_group_saves_and_the_rerun_resumes_bit_identical(
    synthetic, tmp_path, one_process_reference
):
    """SLURM signals every process of the step (pre-emption, time limit): the loader workers get it too."""
    from vicregl_cli.pretrain.loop import train

    run = tmp_path / "stopped"
    assignments = pairs(synthetic, run)
    code, output = launch_and_signal(cli(*assignments), signal.SIGTERM, at_step=3, to_group=True)
    assert code == 128 + signal.SIGTERM, output
    saved = torch.load(run / "checkpoint.pth", weights_only=True)
    step = saved["step"]
    assert 3 <= step < TOTAL, output
    assert saved["sampler"]["epoch"] * STEPS_PER_EPOCH + saved["sampler"]["batch"] == step
    command = " ".join(["vicregl", "pretrain", "--config", "demo", "--device", "cpu", *assignments])
    assert stop_message("SIGTERM", step, run, command) in output
    assert "Traceback" not in output and "DataLoader worker" not in output
    assert not [path.name for path in run.iterdir() if path.name.endswith(".tmp")]  # no half-written file

    resumed = train(config_of(assignments), device="cpu")
    assert (resumed.start_step, resumed.end_step) == (step, TOTAL)
    assert assert_bit_identical(one_process_reference, run) == 0.0
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, TOTAL + 1))


def test_ctrl_c_saves_says_how_to_resume_and_the_rerun_is_bit_identical(
    synthetic, tmp_path, one_process_reference, ctrl_c_reaches_us
):
    """A terminal's Ctrl-C reaches the foreground process group: the main process and its loader workers."""
    from vicregl_cli.pretrain.loop import Hooks, train

    before = set(multiprocessing.active_children())

    def press_ctrl_c(step: int, model: torch.nn.Module) -> None:
        if step == 6:
            workers = [child for child in multiprocessing.active_children() if child not in before]
            assert len(workers) == 2
            pids = [str(process.pid) for process in (multiprocessing.current_process(), *workers)]
            subprocess.run(["kill", "-s", "INT", *pids], check=True)

    run = tmp_path / "ctrl_c"
    assignments = pairs(synthetic, run)
    command_line = ["/usr/bin/vicregl", "pretrain", "--config", "demo", *assignments]
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config_of(assignments), device="cpu", hooks=Hooks(press_ctrl_c), command_line=command_line)
    assert (stopped.value.signum, stopped.value.step) == (signal.SIGINT, 6)
    command = " ".join(["vicregl", *command_line[1:]])
    assert str(stopped.value) == stop_message("SIGINT", 6, run, command)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    resumed = train(config_of(assignments), device="cpu")
    assert (resumed.start_step, resumed.end_step) == (6, TOTAL)
    assert assert_bit_identical(one_process_reference, run) == 0.0


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(synthetic, tmp_path, ctrl_c_reaches_us):
    from vicregl_cli.pretrain.loop import Hooks, train

    def press_ctrl_c_twice(step: int, model: torch.nn.Module) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first: finish the step, save, stop
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once

    run = tmp_path / "twice"
    with pytest.raises(KeyboardInterrupt):
        config = config_of(pairs(synthetic, run, num_workers="0"))
        train(config, device="cpu", hooks=Hooks(press_ctrl_c_twice))
    assert not (run / "checkpoint.pth").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_cli_exits_130_after_ctrl_c_with_one_line(monkeypatch, capsys, tmp_path):
    from vicregl_cli import cli

    def saved_then_stopped() -> None:
        raise TrainingInterrupted(signal.SIGINT, 6, tmp_path / "checkpoint.pth", "vicregl pretrain")

    def stopped_at_once() -> None:
        raise KeyboardInterrupt

    at_once = "interrupted by Ctrl-C: stopped at once (training resumes from its last checkpoint)"
    for app, message in ((saved_then_stopped, stop_message("SIGINT", 6, tmp_path, "vicregl pretrain")),
                         (stopped_at_once, at_once)):  # fmt: skip
        monkeypatch.setattr(cli, "app", app)
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 130
        assert capsys.readouterr().err == message + "\n"


# ---------------------------------------------------------------- two gloo ranks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _blind_to(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's view of the file system lacks every file called `name` (a node-local --out)."""
    exists, is_file, load = Path.exists, Path.is_file, torch.load

    def missing(path) -> bool:
        return Path(path).name == name

    monkeypatch.setattr(Path, "exists", lambda self, **kw: False if missing(self) else exists(self, **kw))
    monkeypatch.setattr(Path, "is_file", lambda self, **kw: False if missing(self) else is_file(self, **kw))

    def load_unless_missing(path, *args, **kwargs):
        if isinstance(path, (str, Path)) and missing(path):
            raise FileNotFoundError(path)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load_unless_missing)


def _rank(rank: int, port: int, assignments: list[str], stop_at: int, blind: bool, report: str) -> None:
    """One of 2 ranks under torchrun's environment: train, counting this rank's checkpoint writes."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vicregl_cli.pretrain import checkpoint
    from vicregl_cli.pretrain.loop import train
    from vicregl_cli.pretrain_hooks import monitor_hooks

    monkeypatch = pytest.MonkeyPatch()
    if blind and rank == 1:
        _blind_to("checkpoint.pth", monkeypatch)
    writes, write = [], checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint",
                        lambda path, payload: (writes.append(payload["step"]), write(path, payload))[1])

    def scheduler_then_torchrun(step: int, model: torch.nn.Module) -> None:
        if step == stop_at:  # SLURM signals every process, then torchrun forwards it again
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    outcome: dict = {"rank": rank}
    try:
        config = config_of(assignments)
        hooks = monitor_hooks(config)
        hooks.after_step = scheduler_then_torchrun
        result = train(config, device="cpu", hooks=hooks)
        outcome.update(start=result.start_step, end=result.end_step)
    except TrainingInterrupted as stopped:
        outcome.update(stopped=stopped.step, signum=stopped.signum)
    outcome["writes"] = writes
    Path(report.format(rank=rank)).write_text(json.dumps(outcome))
    dist.barrier()
    dist.destroy_process_group()


def run_two_ranks(
    assignments: list[str], tmp_path: Path, stop_at: int = 0, blind: bool = False
) -> list[dict]:
    """2 gloo processes (fork: no second import of torch), each as torchrun starts it -> what each did."""
    report = str(tmp_path / f"rank{{rank}}_{_free_port()}.json")
    context = mp.start_processes(_rank, args=(_free_port(), assignments, stop_at, blind, report), nprocs=2,
                                 join=False, start_method="fork")  # fmt: skip
    deadline = time.monotonic() + 240  # a rank waiting on a collective the other never joins fails the test
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish (one of them waits on the other)")
    return [json.loads(Path(report.format(rank=rank)).read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def two_rank_reference(synthetic, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run, with the online k-NN monitor after each epoch (the runs compared with it
    have none: the monitor leaves the training as it was)."""
    folder = tmp_path_factory.mktemp("two")
    run = folder / "reference"
    monitor = {"monitor_data": str(synthetic), "monitor_every": "1"}
    outcomes = run_two_ranks(pairs(synthetic, run, **monitor), folder)
    assert [(o["start"], o["end"], o["writes"]) for o in outcomes] == [(0, TOTAL, [TOTAL]), (0, TOTAL, [])]
    return run


def test_two_ranks_log_once_with_the_knn_monitor_and_tensorboard(synthetic, two_rank_reference):
    from vicregl_cli.backbones import build_backbone, read_backbone_state
    from vicregl_cli.pretrain_hooks import monitor_hooks

    run = two_rank_reference
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    steps = [*range(1, STEPS_PER_EPOCH + 1), STEPS_PER_EPOCH, *range(STEPS_PER_EPOCH + 1, TOTAL + 1), TOTAL]
    assert [line["step"] for line in lines] == steps  # every step once, the monitor after each epoch
    first, knn = lines[STEPS_PER_EPOCH], lines[-1]
    assert set(knn) == set(first) == {"epoch", "step", "knn_top1@20", "knn_top5@20"}
    events = list((run / "tb").iterdir())
    assert len(events) == 1  # rank 0 alone writes TensorBoard
    scalars = EventAccumulator(str(events[0])).Reload()
    assert [event.step for event in scalars.Scalars("pretrain/loss")] == list(range(1, TOTAL + 1))
    assert [event.value for event in scalars.Scalars("pretrain/knn_top1@20")] == [
        pytest.approx(first["knn_top1@20"]), pytest.approx(knn["knn_top1@20"])]  # fmt: skip

    config = config_of(pairs(synthetic, run, monitor_data=str(synthetic)))  # the final backbone, 1 process
    name, state = read_backbone_state(run / "backbone.pth")
    backbone = build_backbone(name)
    backbone.load_state_dict(state)
    one_process = monitor_hooks(config).monitor.measure(backbone, "cpu")
    assert one_process == pytest.approx({key: knn[key] for key in one_process}, abs=1e-6)


def test_sigterm_to_torchrun_mid_epoch_then_a_rerun_where_rank_0_alone_sees_the_checkpoint(
    synthetic, tmp_path, two_rank_reference
):
    """torchrun passes SIGTERM on to each rank's process group (loader workers included); the rerun resumes
    although rank 1 cannot see RUN/checkpoint.pth (a node-local --out): rank 0 decides and tells it."""
    run = tmp_path / "torchrun"
    assignments = pairs(synthetic, run)
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*torchrun, *cli(*assignments)]
    code, output = launch_and_signal(command, signal.SIGTERM, at_step=3, to_group=False)
    assert code != 0 and "DataLoader worker" not in output and "RuntimeError" not in output, output
    assert output.count("Traceback") == 1 and "SignalException" in output  # torchrun's own, none of a rank
    step = torch.load(run / "checkpoint.pth", weights_only=True)["step"]
    assert 3 <= step < TOTAL, output
    assert output.count(stop_message("SIGTERM", step, run, "the same torchrun command")) == 2  # each rank

    resumed = run_two_ranks(assignments, tmp_path, blind=True)  # the same environment as torchrun's ranks
    expected = [(step, TOTAL, [TOTAL]), (step, TOTAL, [])]  # rank 0 writes the checkpoint once, at the end
    assert [(o["start"], o["end"], o["writes"]) for o in resumed] == expected
    assert assert_bit_identical(two_rank_reference, run) == 0.0


def test_two_ranks_signalled_twice_stop_together_and_write_the_checkpoint_once(synthetic, tmp_path):
    """SLURM signals every process and torchrun passes the signal on again: each rank gets SIGTERM twice
    after step 6; both finish step 7 (the ranks agree in the step's all-reduce), rank 0 writes once."""
    run = tmp_path / "twice"
    stopped = run_two_ranks(pairs(synthetic, run), tmp_path, stop_at=6)
    assert [(o["stopped"], o["signum"], o["writes"]) for o in stopped] == [(7, 15, [7]), (7, 15, [])]
    saved = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (saved["step"], saved["sampler"], len(saved["rng"])) == (7, {"epoch": 1, "batch": 1, "seed": 0}, 2)


# ---------------------------------------------------------------- the detection engine


def test_ctrl_c_to_the_detection_engine_and_its_workers_saves_and_stops(synthetic, tmp_path, monkeypatch,
                                                                        ctrl_c_reaches_us):  # fmt: skip
    """Ctrl-C reaches the foreground process group: the engine finishes the step, saves and stops; its
    loader workers live on until the main process closes them."""
    from vicregl_cli.backbones.weights import resolve_weights
    from vicregl_cli.transfer import tv_detection as tv
    from vicregl_cli.transfer.tv_detection import engine
    from vicregl_cli.transfer.tv_detection.geometry import resolve_geometry

    settings = tv.DetectionSettings(
        iters=4, batch_size=2, base_lr=0.02, warmup_iters=2, workers=2, precise_bn_iters=1, rois_per_image=8,
        rpn_batch_per_image=16, proposals_train=20, proposals_test=10, detections_per_image=5,
    )  # fmt: skip
    data = tv.load_data("voc", synthetic.parent / "VOC2012")
    before = set(multiprocessing.active_children())
    step, alive = engine._step, []

    def step_then_ctrl_c(model, optimizer, batch, iteration, *args):
        if iteration == 1:
            workers = [child for child in multiprocessing.active_children() if child not in before]
            for process in [*workers, multiprocessing.current_process()]:
                os.kill(process.pid, signal.SIGINT)
            time.sleep(0.5)  # a worker that died of it would make the loader raise
            alive.extend(worker.is_alive() for worker in workers)
        return step(model, optimizer, batch, iteration, *args)

    monkeypatch.setattr(engine, "_step", step_then_ctrl_c)
    monkeypatch.setattr(sys, "argv", ["vicregl", "detect", "--dataset", "voc"])
    checkpoint = tmp_path / "checkpoint.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = engine.build(resolve_weights("random", "resnet18", 0), "voc", data,
                             resolve_geometry(settings, data.train), settings)  # fmt: skip
        with pytest.raises(TrainingInterrupted) as stopped:
            engine.train(model, data, settings, torch.device("cpu"), checkpoint)
    assert alive == [True, True]
    assert (stopped.value.signum, stopped.value.step) == (signal.SIGINT, 2)
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 2
    assert str(stopped.value).endswith("; run vicregl detect --dataset voc to resume")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
