# The paper's experiments as commands (included by the Makefile). Each target takes
#   SIZE=paper (default): experiments/stage*.yaml as they are (real weights; DRY_RUN=1 prints the commands only)
#   SIZE=tiny           : + experiments/tiny_stage*.yaml (tiny models, sample photos, a few CPU steps), runs/tiny/…
#   SIZE=mini           : stage-1 ablations on the mini world (experiments/mini/ablation_stage1.yaml), runs/mini/…
# Runs: $(RUNS)/<experiment>/<variant> (TensorBoard: make tensorboard RUNS=$(RUNS)/<experiment>); tables: $(RESULTS)/.
# A re-run skips finished variants (their `done` marker) and resumes an interrupted one (--ckpt_path last).
SIZE    ?= paper
RESULTS ?= results
DRY_RUN ?=
METRICS ?=
CKPT    ?= $(if $(filter tiny,$(SIZE)),$(RUNS)/tiny/ablation-stage2-path/path-fidelity/checkpoints/last.ckpt,$(RUNS)/ctsr-stage2/checkpoints/last.ckpt)

# linear-combination, tiny: the realness model is the tiny stage-2 model of ablation-stage2-path when it exists (then
# its t sweep is drawn beside the blends), else an untrained tiny generator.
REALNESS ?= $(if $(filter tiny,$(SIZE)),$(wildcard $(RUNS)/tiny/ablation-stage2-path/path-fidelity/checkpoints/last.ckpt))

ifeq ($(filter $(SIZE),paper tiny mini),)
$(error SIZE must be paper, tiny or mini, got '$(SIZE)')
endif

EXP_ENV   := $(if $(filter tiny mini,$(SIZE)),$(OFFLINE))
EXP_DEPS  := $(STAMP) $(if $(filter tiny,$(SIZE)),samples) $(if $(filter mini,$(SIZE)),mini-data)
# tiny: every run of a sweep in one process (the start-up costs more than a tiny run)
EXP_FLAGS := $(if $(filter tiny,$(SIZE)),--in-process) --size $(SIZE) --runs-dir $(RUNS) --results $(RESULTS) $(if $(DRY_RUN),--dry-run) $(if $(METRICS),--metrics $(METRICS))
SWEEP     := $(EXP_ENV) $(BIN)/python -m ctsr.experiments.sweep

.PHONY: ablation-lambda ablation-distill ablation-teacher ablation-stage2-path ablations sweep-t linear-combination

ablation-lambda: $(EXP_DEPS) ## Table 6: λ_rn, λ_fl, γ_time grid (+ γ_time=0), train+evaluate, results/ablation-lambda.md (SIZE=tiny|paper)
	$(SWEEP) $@ $(EXP_FLAGS)

ablation-distill: $(EXP_DEPS) ## Table 4: stage 1 with / without the distillation terms (SIZE=tiny|paper)
	$(SWEEP) $@ $(EXP_FLAGS)

ablation-teacher: $(EXP_DEPS) ## Table 5: fidelity teacher SinSR vs ResShift (docs/teachers.md; tiny: bilinear/bicubic)
	$(SWEEP) $@ $(EXP_FLAGS)

ablation-stage2-path: $(EXP_DEPS) ## stage-2 control paths fidelity/noise/denoise, a t sweep each (STAGE1_CKPT=… to start from)
	$(SWEEP) $@ $(EXP_FLAGS) $(if $(STAGE1_CKPT),--stage1-ckpt $(STAGE1_CKPT))

ablations: ablation-lambda ablation-distill ablation-teacher ablation-stage2-path ## every ablation above, in turn

sweep-t: $(EXP_DEPS) ## Tables 7, 10-12: `ctsr test` of CKPT=… across t with experiments/eval.yaml (tiny: needs ablation-stage2-path)
	$(SWEEP) $@ $(EXP_FLAGS) --ckpt $(CKPT)

linear-combination: $(EXP_DEPS) ## Table 1 baseline: α·fidelity + (1-α)·realness, α=0…1, table + figure in results/
	$(EXP_ENV) $(BIN)/python -m ctsr.experiments.linear_combination --size $(SIZE) --results $(RESULTS) $(if $(DRY_RUN),--dry-run) $(if $(REALNESS),--realness $(REALNESS)) $(if $(FIDELITY),--fidelity $(FIDELITY))

.PHONY: table9
table9: $(EXP_DEPS) ## Table 9: low-light enhancement — train stage 1 of task lle, score it beside its teachers (GSAD's protocol), results/table9.md (SIZE=tiny|paper; FIDELITY=… REALNESS=… MODEL=…)
	$(EXP_ENV) $(BIN)/python -m ctsr.experiments.table9 --size $(SIZE) --runs-dir $(RUNS) --results $(RESULTS) $(if $(filter tiny,$(SIZE)),--in-process) $(if $(DRY_RUN),--dry-run) $(if $(FIDELITY),--fidelity $(FIDELITY)) $(if $(REALNESS),--realness $(REALNESS)) $(if $(MODEL),--model $(MODEL))
