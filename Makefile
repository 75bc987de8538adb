# One set-up, shared by every target: .venv/ with the project installed (editable, dev and cluster extras).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# On machines that keep a CPU torch 2.13.0 wheel in /opt/wheels, take it instead of a multi-GB CUDA build.
# Elsewhere pip resolves torch from pyproject.toml; `make install SYSTEM_TORCH=1` reuses a torch you already have.
TORCH_PIN ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl),torch==2.13.0,)
VENV_FLAGS := $(if $(SYSTEM_TORCH),--system-site-packages,)
export MUJOCO_GL ?= egl
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test lint train bench-default-job bench-envs bench-wm bench-speed bench-learning bench-dmc-proprio bench-insight bench-world-model bench-continual readme clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(TORCH_PIN),$(BIN)/pip install -q $(TORCH_PIN))
	$(BIN)/pip install -q -e '.[dev,cluster]'
	touch $@

# The test suite, then a check that every README table is what its results file says (benchmarks/readme.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python -m benchmarks.readme --check

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# The main job: a short real training run (see README), logs under runs/.
train: $(STAMP)
	$(BIN)/python -m agent train --logdir runs/train-$$(date +%Y%m%d-%H%M%S)

# The main job timed end to end (make train's run, in runs/default_job-<time>): wall time from process start to
# the first eval at the learning benchmark's threshold, the eval curve, and how busy the machine was meanwhile,
# into results/default_job_cpu.json (default_job_cuda.json where the default job is the CUDA one). About 10
# minutes on 2 idle cores; a loaded machine makes the times longer (the results file says how loaded).
# DEFAULT_JOB_FLAGS=--stop-at-threshold ends the run there.
DEFAULT_JOB_FLAGS ?=
bench-default-job: $(STAMP)
	$(BIN)/python -m benchmarks.default_job $(DEFAULT_JOB_FLAGS)

bench-envs: $(STAMP)
	$(BIN)/python -m benchmarks.env_throughput --out results/env_throughput.json

bench-wm: $(STAMP)
	$(BIN)/python -m benchmarks.wm_throughput --presets debug cpu small 12m --encoders patch cnn --threads 1 \
		--warmup 1 --repeats 3 --out results/wm_throughput_cpu.json
	$(BIN)/python -m benchmarks.wm_throughput --agent --presets cpu 12m --encoders patch cnn --threads 1 \
		--warmup 1 --repeats 3 --rounds 3 --out results/agent_update_cpu.json
	$(BIN)/python -m benchmarks.param_counts --out results/param_counts.json

# The whole agent update of the working tree against SPEED_BASELINE, timed in the same run: children alternate
# between the two trees for SPEED_FLAGS' rounds (see benchmarks/wm_throughput.py). About 10 minutes on 2 cores.
# The first round also runs --check-updates (default 3) seeded updates per side and prints whether the losses
# are the same (`equivalence` and `same_losses` per result; --check-updates 0 in SPEED_FLAGS turns it off).
# A smoke run: make bench-speed SPEED_FLAGS="--presets debug --batch 2 --length 8 --threads 1 --warmup 1 \
#   --repeats 1 --rounds 1" SPEED_OUT=/tmp/speed_smoke.json
SPEED_BASELINE ?= e8b2407
SPEED_FLAGS ?= --presets cpu --batch 16 --length 64 --threads 1 --warmup 2 --repeats 5 --rounds 3
SPEED_OUT ?= results/speed_cpu.json
# Both revisions run today's cpu preset settings (the baseline's preset had other learning rates, no replay-value
# loss and a wider tubelet MLP), so the ratio measures the code, not a change of configuration.
SPEED_SET ?= actor_critic.actor_lr=1e-4 actor_critic.critic_lr=3e-4 actor_critic.replay_value=0.3 \
	world_model.encoder.mlp_ratio=2
bench-speed: $(STAMP)
	$(BIN)/python -m benchmarks.wm_throughput --agent --obs state --encoders patch $(SPEED_FLAGS) \
		--set $(SPEED_SET) --baseline $(SPEED_BASELINE) --profile --out $(SPEED_OUT)
	$(BIN)/python -m benchmarks.wm_throughput --agent --obs pixels --encoders patch cnn $(SPEED_FLAGS) \
		--set $(SPEED_SET) --baseline $(SPEED_BASELINE) --profile --append --out $(SPEED_OUT)

bench-learning: $(STAMP)
	$(BIN)/python -m benchmarks.learning --suite cpu --out results/learning_cpu.json
	$(BIN)/python -m benchmarks.learning --suite cpu-pixels --parallel 1 --out results/learning_cpu_pixels.json

# The DMC proprio suite against DreamerV3's curves (README): six DMC state tasks x 100,000 env steps x seeds 0 1,
# two runs at a time, 25,000 updates per run (hours each on one core). Rerun to resume: finished
# runs are reused, unfinished ones continue from their last checkpoint. Exits 1 while a task is below DreamerV3.
# Then `make readme` renders the README's table from results/learning_dmc_proprio.json.
bench-dmc-proprio: $(STAMP)
	$(BIN)/python -m benchmarks.learning --suite dmc-proprio --seeds 0 1 --parallel 2 --rundir runs/dmc_proprio \
		--out results/learning_dmc_proprio.json

# The continual benchmark on the CPU sequences (Pendulum: conflicting, then related tasks): three replay
# strategies, each without and with the plasticity method CONTINUAL_PLASTICITY (shrink_perturb or redo, at
# task boundaries; shrink_perturb from the pilot in the README: redo found no dormant unit to recycle), for each of the CONTINUAL_SEEDS, plus one single-task reference run per task and seed (cached).
# About an hour a run on one idle core: 18 runs and 3-4 hours of references per sequence. Rerun to resume.
# cartpole-shift, walker-reward and cheetah-dynamics are for bigger machines: CONTINUAL_SEQUENCES=... to run them.
CONTINUAL_SEQUENCES ?= pendulum-conflict pendulum-physics
CONTINUAL_SEEDS ?= 0 1 2
CONTINUAL_PARALLEL ?= 2
CONTINUAL_PLASTICITY ?= shrink_perturb
bench-continual: $(STAMP)
	for sequence in $(CONTINUAL_SEQUENCES); do \
		$(BIN)/python -m benchmarks.continual --sequence $$sequence --strategy fifo reservoir mix \
			fifo+$(CONTINUAL_PLASTICITY) reservoir+$(CONTINUAL_PLASTICITY) mix+$(CONTINUAL_PLASTICITY) --seeds $(CONTINUAL_SEEDS) --parallel $(CONTINUAL_PARALLEL) --out results/continual_$$sequence.json \
			|| exit 1; \
	done

# What the world models of trained checkpoints know; default: the DMC proprio suite's cartpole-balance state run
# (make bench-dmc-proprio) on random-policy episodes. Add the cpu-pixels suite's runs (make bench-learning) with
# INSIGHT_CHECKPOINTS and INSIGHT_LABELS (README: "What the world model knows").
INSIGHT_CHECKPOINTS ?= runs/dmc_proprio/cartpole_balance/checkpoint.pt
INSIGHT_LABELS ?= state
bench-insight: $(STAMP)
	$(BIN)/python -m benchmarks.insight --checkpoint $(INSIGHT_CHECKPOINTS) --label $(INSIGHT_LABELS) \
		--policy random --video-sequences 2 --out results/insight --tensorboard runs/insight

# The patch encoder on trial (issue 16): world models trained alone on recorded datasets (data/world_model/<task>,
# recorded on the first call: 60 training and 12 held-out episodes per task from uniform and smooth random actions),
# encoders cnn, patch1, patch2, patch4 at equal FLOPs per frame, 3 tasks x 3 seeds, WM_UPDATES updates each; writes
# results/world_model.json, .md and two plots (`python -m benchmarks.world_model --report-only` redraws them).
# Days on one core (see the estimate in the .md); rerun to resume: finished runs are reused, others continue.
WM_UPDATES ?= 5000
WM_FLAGS ?=
bench-world-model: $(STAMP)
	$(BIN)/python -m benchmarks.world_model --grid --updates $(WM_UPDATES) --out results/world_model.json $(WM_FLAGS)

readme: $(STAMP)
	$(BIN)/python -m benchmarks.readme
