"""What the launcher's environment and a wrapped torchrun command say: the run group and the ranks."""

from __future__ import annotations

import pytest

from llamamon.errors import ConfigError
from llamamon.launcher import Launch, check_group_name, launch_from, torchrun_option

TORCHRUN = ["torchrun", "--nnodes", "4", "--nproc-per-node", "8", "--standalone", "--max_restarts=3"]


@pytest.mark.parametrize(
    "command",
    [
        [*TORCHRUN, "--rdzv-id", "job-42", "train.py", "--rdzv-id", "not-this"],
        [*TORCHRUN, "--rdzv_id=job-42", "train.py"],
        [*TORCHRUN, "--rdzv_id", "job-42", "train.py"],
        ["/opt/venv/bin/torchrun", "--rdzv-id=job-42", "train.py"],
        ["python", "-m", "torch.distributed.run", "--nnodes=2", "--rdzv-id", "job-42", "train.py"],
    ],
)
def test_rdzv_id_is_read_from_torchruns_own_options(command):
    assert torchrun_option(command, "rdzv-id") == "job-42"


@pytest.mark.parametrize(
    "command",
    [
        [*TORCHRUN, "train.py", "--rdzv-id", "the-scripts-own"],  # after the script: the script's argument
        ["python", "train.py", "--rdzv-id", "x"],  # not torchrun
        ["mytorchrun", "--rdzv-id", "x"],
        [*TORCHRUN, "--rdzv-id"],  # no value
    ],
)
def test_rdzv_id_elsewhere_is_not_torchruns(command):
    assert torchrun_option(command, "rdzv-id") is None


def test_precedence_flag_then_llamamon_group_then_rdzv_id_then_torchelastic_then_slurm():
    command = ["torchrun", "--rdzv-id", "rdzv", "train.py"]
    env = {"LLAMAMON_GROUP": "mine", "TORCHELASTIC_RUN_ID": "elastic", "SLURM_JOB_ID": "123"}
    assert launch_from(env, command, "flag").run_group == "flag"
    assert launch_from(env, command).run_group == "mine"
    del env["LLAMAMON_GROUP"]
    assert launch_from(env, command).run_group == "rdzv"
    assert launch_from(env, ["python", "train.py"]).run_group == "elastic"
    del env["TORCHELASTIC_RUN_ID"]
    assert launch_from(env, ["python", "train.py"]).run_group == "123"
    assert launch_from({}, ["python", "train.py"]) == Launch()


def test_torchruns_default_id_none_names_no_job():
    assert launch_from({"TORCHELASTIC_RUN_ID": "none"}).run_group is None
    assert launch_from({}, ["torchrun", "--rdzv-id", "none", "t.py"]).run_group is None


def test_ranks_from_torchrun_slurm_and_the_plain_variables():
    slurm = {"SLURM_JOB_ID": "9", "SLURM_NODEID": "2", "SLURM_PROCID": "17"}
    assert launch_from(slurm, ["python", "t.py"]) == Launch("9", 2, 17)
    # Under torchrun the workers are the ranks: srun's task id is the node's, not a rank.
    assert launch_from(slurm, ["torchrun", "--node-rank", "3", "t.py"]) == Launch("9", 3, None)
    assert launch_from({"NODE_RANK": "1", "RANK": "5"}) == Launch(None, 1, 5)
    assert launch_from({"GROUP_RANK": "x", "SLURM_NODEID": "4"}) == Launch(None, 4, None)  # not a number: skipped


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "  ", ".hidden", "a\\b", "a\x00b", "x" * 65, "tab\there"])
def test_group_names_with_path_characters_are_refused_naming_where(bad):
    with pytest.raises(ConfigError) as caught:
        check_group_name(bad, "SLURM_JOB_ID")
    assert str(caught.value).startswith("SLURM_JOB_ID: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("good", ["job1", "4242", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "exp.3+a@b=c", "é-run"])
def test_ordinary_job_ids_are_kept_as_they_are(good):
    assert check_group_name(f" {good} ") == good
