# `attnkit visualize` (included from tests/CMakeLists.txt inside if(TARGET attnkit_cli); OpenCV builds
# only). Runs the program on a bundled Fashion-MNIST sample with the bundled model (no attention:
# the CAM family) and with a resnet20-cbam trained for one tiny epoch (native maps), then checks the
# files with tests/python/check_outputs.py where the set-up script's Python exists.

set(_vis ${CMAKE_CURRENT_BINARY_DIR}/visualize)
set(_exe $<TARGET_FILE:attnkit_cli>)
set(_sample ${PROJECT_SOURCE_DIR}/weights/samples/0000-ankle-boot.png)
# The CAM family's cases run on the plain ResNet-20 x4 (no attention: auto → gradcam); the default model's
# own cases (native maps out of the box) are at the end.
set(_plain_file ${PROJECT_SOURCE_DIR}/weights/fashion-mnist-resnet20x4.attnkit)
set(_plain --weights ${_plain_file})
set(_stem 0000-ankle-boot)
# 28×28 samples are drawn at 280×280 (scaled up by 10 to reach --display-size 256).
set(_side 280)

# check(NAME FIXTURE KIND FILE ARGS...): a Python check of a written file, after the test FIXTURE.
function(_vis_check name fixture)
  if(ATTNKIT_PYTHON)
    attnkit_cli_test(NAME cli.visualize.check_${name} MATCH "^ok: "
      COMMAND "${ATTNKIT_PYTHON}" ${CMAKE_CURRENT_SOURCE_DIR}/python/check_outputs.py ${ARGN})
    set_tests_properties(cli.visualize.check_${name} PROPERTIES FIXTURES_REQUIRED ${fixture})
  endif()
endfunction()

attnkit_cli_test(NAME cli.visualize.help COMMAND attnkit_cli visualize --help MATCH
  "--method.*gradcam\\+\\+.*--layer.*--target.*--query.*--alpha.*--colormap.*--raw.*png16.*--out.*--overwrite.*--device")

# Every method on the bundled model: one overlay per map and a grid, at the sample's display size.
foreach(method gradcam hirescam gradcam++ xgradcam layercam eigencam eigengradcam scorecam ablationcam auto)
  string(REPLACE "+" "p" _id ${method})
  set(_file ${method})
  if(method STREQUAL "auto")
    set(_file gradcam)  # the bundled model has no attention blocks: auto → gradcam
  endif()
  string(REPLACE "+" "\\+" _re ${_file})
  attnkit_cli_test(NAME cli.visualize.method_${_id}
    COMMAND attnkit_cli visualize ${_sample} ${_plain} --method ${method} --out ${_vis}/${_id} --overwrite
    MATCH "0000-ankle-boot.png: Ankle boot [0-9.]+% \\(class 9\\).*wrote [^\n]*/${_stem}\\.${_re}\\.layer3\\.png\n  wrote [^\n]*/${_stem}\\.${_re}\\.grid\\.png"
    EXISTS ${_vis}/${_id}/${_stem}.${_file}.layer3.png ${_vis}/${_id}/${_stem}.${_file}.grid.png)
  set_tests_properties(cli.visualize.method_${_id} PROPERTIES FIXTURES_SETUP vis_${_id})
  _vis_check(method_${_id} vis_${_id} png ${_vis}/${_id}/${_stem}.${_file}.layer3.png ${_side} ${_side})
  _vis_check(grid_${_id} vis_${_id} png ${_vis}/${_id}/${_stem}.${_file}.grid.png 572 288)
endforeach()

# Every method × every stage in one grid (1 + 9 × 3 = 28 tiles → 6 × 5 of 280 px with 4 px borders), raw 16-bit maps.
attnkit_cli_test(NAME cli.visualize.all_methods_all_layers
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --method all --layer all --raw png16 --colormap turbo --out ${_vis}/all --overwrite
  MATCH "wrote [^\n]*ablationcam\\.layer3\\.raw\\.png\n  wrote [^\n]*${_stem}\\.all\\.grid\\.png")
set_tests_properties(cli.visualize.all_methods_all_layers PROPERTIES FIXTURES_SETUP vis_all)
_vis_check(all_grid vis_all png ${_vis}/all/${_stem}.all.grid.png 1708 1424)
_vis_check(all_png16_layer1 vis_all png ${_vis}/all/${_stem}.gradcam++.layer1.raw.png 28 28 16)
_vis_check(all_png16_layer3 vis_all png ${_vis}/all/${_stem}.layercam.layer3.raw.png 7 7 16)

# --raw npy: float32 [14, 14] for layer2 of a 28×28 input.
attnkit_cli_test(NAME cli.visualize.raw_npy
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --method layercam --layer layer2 --raw npy --no-grid --out ${_vis}/npy --overwrite
  MATCH "wrote [^\n]*${_stem}\\.layercam\\.layer2\\.npy" ABSENT ${_vis}/npy/${_stem}.layercam.grid.png)
set_tests_properties(cli.visualize.raw_npy PROPERTIES FIXTURES_SETUP vis_npy)
_vis_check(raw_npy vis_npy npy ${_vis}/npy/${_stem}.layercam.layer2.npy 14 14)

# An existing file is an error naming it; nothing of that image is written (not even new files).
attnkit_cli_test(NAME cli.visualize.refuses_to_clobber
  SETUP "rm -rf ${_vis}/clobber && ${_exe} visualize ${_sample} --weights ${_plain_file} --out ${_vis}/clobber >/dev/null"
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --out ${_vis}/clobber --raw npy EXIT 1
  MATCH "attnkit: visualize: [^\n]*${_stem}\\.gradcam\\.layer3\\.png exists; pass --overwrite"
  ABSENT ${_vis}/clobber/${_stem}.gradcam.layer3.npy)

# A missing and a corrupt image: one line each, exit 1, the good image in between still processed.
attnkit_cli_test(NAME cli.visualize.missing_and_corrupt_inputs
  COMMAND attnkit_cli visualize ${_plain} /nonexistent/a.png ${PROJECT_SOURCE_DIR}/README.md
          ${PROJECT_SOURCE_DIR}/weights/samples/0001-pullover.png --out ${_vis}/bad --overwrite
  EXIT 1 MATCH "(^|\n)attnkit: visualize: /nonexistent/a.png: no such file\n"
               "(^|\n)attnkit: visualize: [^\n]*README.md: cannot decode the image"
               "wrote [^\n]*0001-pullover.gradcam.layer3.png"
               "2 of 3 images failed"
  EXISTS ${_vis}/bad/0001-pullover.gradcam.layer3.png)

# _vis_error(NAME REGEX ARGS...): visualize the sample with ARGS fails with exit 1, says REGEX, writes nothing.
function(_vis_error name regex)
  attnkit_cli_test(NAME cli.visualize.${name} SETUP "rm -rf ${_vis}/never"
    COMMAND attnkit_cli visualize ${_sample} ${_plain} ${ARGN} --out ${_vis}/never
    EXIT 1 MATCH "${regex}" ABSENT ${_vis}/never/${_stem}.gradcam.grid.png)
endfunction()
_vis_error(unknown_layer
  "^attnkit: --layer \"layer9\": not a layer gradcam can use on resnet20; valid layers: layer1, layer2, layer3, layer1.0, [^\n]*, all\n$"
  --layer layer9)
_vis_error(bad_target "--target \"Hat\": not a class index in \\[0, 10\\) nor a class name \\(T-shirt/top, Trouser" --target Hat)
_vis_error(native_without_attention "--method native: model resnet20 has no spatial attention" --method native)
_vis_error(bad_query "--query \"0.5\": expected X,Y with both in \\[0, 1\\]" --query 0.5)
_vis_error(top_k_beyond_classes "^attnkit: --top-k 11: the model has only 10 classes\n$" --top-k 11)
attnkit_cli_test(NAME cli.visualize.cam_batch_bound COMMAND attnkit_cli visualize ${_sample} ${_plain} --method scorecam --cam-batch 0
  EXIT 2 MATCH "^attnkit: --cam-batch[^\n]*0[^\n]*\n")

# Smoothing and two layers averaged into one map at the input's resolution (28 × 28).
attnkit_cli_test(NAME cli.visualize.smoothed_and_combined
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --method layercam --aug-smooth --eigen-smooth --layer layer2 --layer layer3
          --combine-layers --raw npy --no-grid --out ${_vis}/smooth --overwrite
  MATCH "wrote [^\n]*${_stem}\\.layercam\\.layer2\\+layer3\\.png\n  wrote [^\n]*${_stem}\\.layercam\\.layer2\\+layer3\\.npy")
set_tests_properties(cli.visualize.smoothed_and_combined PROPERTIES FIXTURES_SETUP vis_smooth)
_vis_check(smoothed_npy vis_smooth npy ${_vis}/smooth/${_stem}.layercam.layer2+layer3.npy 28 28)

# --top-k 2: one map per class, the class in the file name.
attnkit_cli_test(NAME cli.visualize.top_k
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --method gradcam --top-k 2 --no-grid --out ${_vis}/topk --overwrite
  MATCH "wrote [^\n]*${_stem}\\.gradcam\\.Ankle-boot\\.layer3\\.png\n  wrote [^\n]*${_stem}\\.gradcam\\.[^.]+\\.layer3\\.png\n")

# --score: pytorch-grad-cam's faithfulness metrics per map, as a table and as JSON (alone on stdout).
attnkit_cli_test(NAME cli.visualize.score_table
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --method all --score --no-grid --no-overlay --out ${_vis}/score --overwrite
  MATCH "  method +layer +class +change +drop +increase +MoRF +LeRF +ROAD\n  gradcam +layer3 +Ankle boot +-?[0-9.]+"
        "faithfulness, mean over 1 image [^\n]*\n  method +layer +change[^\n]*\n  gradcam +layer3 [^\n]*\n  gradcam\\+\\+ +layer3 ")
attnkit_cli_test(NAME cli.visualize.score_json
  COMMAND sh -c "'$<TARGET_FILE:attnkit_cli>' visualize ${_sample} --weights ${_plain_file} ${PROJECT_SOURCE_DIR}/weights/samples/0001-pullover.png --method scorecam --score --format json --no-grid --no-overlay --out ${_vis}/score-json --overwrite 2>/dev/null"
  MATCH "^{\n  \"maps\": \\[\n +{\n[^}]*\"image\": \"[^\"]*0000-ankle-boot.png\""
        "\"road_combined\": -?[0-9]"
        "\"mean\": \\[\n +{\n[^}]*\"method\": \"scorecam\""
        "\"road_lerf_per_percentile\": \\[")

attnkit_cli_test(NAME cli.visualize.target_by_name
  COMMAND attnkit_cli visualize ${_sample} ${_plain} --target Sandal --out ${_vis}/target --overwrite
  MATCH "; maps for Sandal \\(class 5\\)")

# Native maps: a resnet20-cbam checkpoint from one epoch on 64 Fashion-MNIST images (the honest way
# to get a checkpoint: the program's own training), then auto → native, one map per CBAM block.
attnkit_cli_test(NAME cli.visualize.train_cbam SETUP "rm -rf ${_vis}/cbam-run"
  COMMAND attnkit_cli train --model resnet20-cbam --max-images 64 --val-size 0 --epochs 1
          --batch-size 32 --threads 2 --quiet --out ${_vis}/cbam-run
  EXISTS ${_vis}/cbam-run/last.pt)
set_tests_properties(cli.visualize.train_cbam PROPERTIES FIXTURES_SETUP vis_cbam_model TIMEOUT 600)
attnkit_cli_test(NAME cli.visualize.native_cbam
  COMMAND attnkit_cli visualize ${_sample} --weights ${_vis}/cbam-run/last.pt --raw npy --query 0.5,0.5
          --out ${_vis}/native --overwrite
  MATCH "methods: native\n.*wrote [^\n]*${_stem}\\.native\\.layer1\\.0\\.png.*wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.npy.*wrote [^\n]*${_stem}\\.native\\.grid\\.png")
set_tests_properties(cli.visualize.native_cbam PROPERTIES FIXTURES_REQUIRED vis_cbam_model FIXTURES_SETUP vis_native)
_vis_check(native_npy vis_native npy ${_vis}/native/${_stem}.native.layer2.1.npy 14 14)
_vis_check(native_grid vis_native png ${_vis}/native/${_stem}.native.grid.png 1140 856)

# --method native on CBAM also draws its channel gate: one bar chart per block and the weights in --raw npy.
attnkit_cli_test(NAME cli.visualize.native_channel_gates
  COMMAND attnkit_cli visualize ${_sample} --weights ${_vis}/cbam-run/last.pt --method native --layer layer3.2 --raw npy
          --out ${_vis}/gates --overwrite
  MATCH "methods: native native \\(channel gates\\)\n"
        "wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.png\n"
        "wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.channels\\.png\n  wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.channels\\.npy")
set_tests_properties(cli.visualize.native_channel_gates PROPERTIES FIXTURES_REQUIRED vis_cbam_model FIXTURES_SETUP vis_gates)
_vis_check(gates_npy vis_gates gates ${_vis}/gates/${_stem}.native.layer3.2.channels.npy 64)
_vis_check(gates_png vis_gates png ${_vis}/gates/${_stem}.native.layer3.2.channels.png 704 300)

# The default model has CBAM: with no --weights, --method native (and auto) draws its own spatial maps.
attnkit_cli_test(NAME cli.visualize.bundled_native
  COMMAND attnkit_cli visualize ${_sample} --method native --layer layer3.2 --raw npy --no-grid --out ${_vis}/bundled --overwrite
  MATCH "0000-ankle-boot.png: Ankle boot [0-9.]+% \\(class 9\\)" "methods: native native \\(channel gates\\)\n"
        "wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.png\n  wrote [^\n]*${_stem}\\.native\\.layer3\\.2\\.npy")
set_tests_properties(cli.visualize.bundled_native PROPERTIES FIXTURES_SETUP vis_bundled)
_vis_check(bundled_native_npy vis_bundled npy ${_vis}/bundled/${_stem}.native.layer3.2.npy 7 7)
attnkit_cli_test(NAME cli.visualize.bundled_auto_is_native
  COMMAND attnkit_cli visualize ${_sample} --no-grid --out ${_vis}/bundled-auto --overwrite
  MATCH "methods: native\n" EXISTS ${_vis}/bundled-auto/${_stem}.native.layer3.2.png)
