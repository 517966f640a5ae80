# `attnkit classify`, through the program (included by tests/CMakeLists.txt when attnkit_cli exists).
# Output checks that need parsing (JSON lines, CSV, parity with torchvision) are done by
# tests/python/check_classify.py and skipped where there is no Python; the rest check exit code,
# output and files with attnkit_cli_test (tests/cli_check.cmake). Scratch files go to
# build/tests/classify, one folder per test so that the tests may run in parallel.

set(_ck ${CMAKE_CURRENT_BINARY_DIR}/classify)
set(_samples ${PROJECT_SOURCE_DIR}/weights/samples)
set(_ak $<TARGET_FILE:attnkit_cli>)
file(MAKE_DIRECTORY ${_ck})

attnkit_cli_test(NAME cli.classify_help COMMAND attnkit_cli classify --help MATCH
  "PATH.*--list.*--recursive.*--weights.*bundled.*--top-k.*=5.*--batch-size.*=32.*--device.*auto.*cpu.*cuda.*--threads.*--format.*table.*json.*csv.*--output.*--overwrite.*Exit code")

# The bundled samples with the bundled model: a table line per file and the summary line.
attnkit_cli_test(NAME cli.classify_samples_table COMMAND attnkit_cli classify ${_samples} --top-k 3 MATCH
  "0000-ankle-boot.png +Ankle boot \\([0-9.]+%\\), [^,\n]+ \\([0-9.]+%\\), [^,\n]+ \\([0-9.]+%\\)\n.*classify: 10 images, 0 failed, [0-9.]+ images/s, [0-9.]+ ms per image \\([a-z]+, (float32|bfloat16) \\(auto: [^)]+\\), inference path, batch 32, first batch [0-9.]+ s; (calibrated, T=[0-9.e+-]+|uncalibrated)\\)")

# ---- the checkpoint's temperature: probabilities are softmax(logits / T), the classes stay ------------
# Copies of the bundled model with a temperature set by `attnkit calibrate --temperature`. T = 10^6
# flattens the ten probabilities to 10.00% each; T = 10^-6 puts 100.00% on the top-1 (multiplying by T
# instead would do the opposite); T = 1 is no calibration. Exact values: check_classify.py temperature.
foreach(case "flat|1e6|Ankle boot \\(10.00%\\), [^,\n]+ \\(10.00%\\), [^,\n]+ \\(10.00%\\)\n.*calibrated, T=1e\\+06\\)"
             "sharp|1e-6|Ankle boot \\(100.00%\\), [^,\n]+ \\(0.00%\\), [^,\n]+ \\(0.00%\\)\n.*calibrated, T=1e-06\\)"
             "none|1|Ankle boot \\([1-9][0-9].[0-9][0-9]%\\), [^\n]*\n.*uncalibrated\\)")
  string(REPLACE "|" ";" case "${case}")
  list(GET case 0 id)
  list(GET case 1 t)
  list(GET case 2 expected)
  attnkit_cli_test(NAME cli.classify_temperature_${id}
    SETUP "${_ak} calibrate --weights ${PROJECT_SOURCE_DIR}/weights/fashion-mnist-resnet20x4.attnkit --temperature ${t} --out ${_ck}/t-${id}.attnkit --overwrite"
    COMMAND attnkit_cli classify ${_samples}/0000-ankle-boot.png --weights ${_ck}/t-${id}.attnkit --top-k 3 MATCH "^[^\n]*0000-ankle-boot.png +${expected}")
endforeach()

# PATHs first, then the --list entries (relative to the list's folder, comments skipped); a quoted
# glob pattern is expanded by attnkit.
attnkit_cli_test(NAME cli.classify_list_and_glob WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf list && mkdir list && cp ${_samples}/0002-trouser.png list/ && printf '# a comment\\n0002-trouser.png\\n\\n${_samples}/0008-sandal.png\\n' > list/inputs.txt"
  COMMAND attnkit_cli classify "${_samples}/000[01]-*.png" --list list/inputs.txt -k 1 MATCH
  "0000-ankle-boot.png +Ankle boot[^\n]*\n[^\n]*0001-pullover.png +Pullover[^\n]*\n[^\n]*0002-trouser.png +Trouser[^\n]*\n[^\n]*0008-sandal.png +Sandal[^\n]*\nclassify: 4 images, 0 failed")

# ---- failures: one error line per bad file, the rest go on, exit code 1 -----------------------------
attnkit_cli_test(NAME cli.classify_missing_file WORKING_DIRECTORY ${_ck}
  COMMAND attnkit_cli classify missing.png ${_samples}/0000-ankle-boot.png EXIT 1 MATCH
  "^missing.png: error: no such file\n[^\n]*0000-ankle-boot.png +Ankle boot [^\n]*\nclassify: 2 images, 1 failed")
attnkit_cli_test(NAME cli.classify_corrupt_png WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf corrupt && mkdir corrupt && printf 'not a PNG at all' > corrupt/bad.png"
  COMMAND attnkit_cli classify corrupt/bad.png ${_samples}/0001-pullover.png --format json EXIT 1 MATCH
  "^{\"path\":\"corrupt/bad.png\",\"error\":\"cannot decode the image[^\n]*\"}\n{\"path\":\"[^\"]*0001-pullover.png\",\"top\":\\[{\"label\":\"Pullover\",\"index\":2,\"prob\":[^\n]*\nclassify: 2 images, 1 failed")

# Not a regular file: a FIFO named like an image is refused at once (it used to block classify
# forever, and the good file after it was never classified).
attnkit_cli_test(NAME cli.classify_fifo_is_an_error_not_a_hang WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf fifo && mkdir fifo && mkfifo fifo/pipe.png"
  COMMAND attnkit_cli classify fifo/pipe.png ${_samples}/0000-ankle-boot.png EXIT 1 MATCH
  "^fifo/pipe.png: error: is not a regular file[^\n]*\n[^\n]*0000-ankle-boot.png +Ankle boot [^\n]*\nclassify: 2 images, 1 failed")
set_tests_properties(cli.classify_fifo_is_an_error_not_a_hang PROPERTIES TIMEOUT 120)
# A JPEG cut in half decodes (libjpeg pads it and only warns): it must be an error for that file,
# while the complete JPEG it was cut from is classified.
attnkit_cli_test(NAME cli.classify_truncated_jpeg WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf jpeg && mkdir jpeg && ffmpeg -loglevel error -y -i ${_samples}/0000-ankle-boot.png -q:v 2 jpeg/full.jpg && head -c $(( $(stat -c %s jpeg/full.jpg) / 2 )) jpeg/full.jpg > jpeg/cut.jpg"
  COMMAND attnkit_cli classify jpeg/cut.jpg jpeg/full.jpg EXIT 1 MATCH
  "^jpeg/cut.jpg: error: the JPEG is cut short[^\n]*\n[^\n]*full.jpg +Ankle boot [^\n]*\nclassify: 2 images, 1 failed")

# ---- usage errors: exit code 2 ---------------------------------------------------------------------
attnkit_cli_test(NAME cli.classify_no_inputs COMMAND attnkit_cli classify EXIT 2 MATCH "give at least one PATH or --list FILE")
attnkit_cli_test(NAME cli.classify_folder_without_images WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf empty && mkdir -p empty/sub && cp ${_samples}/0000-ankle-boot.png empty/sub/"
  COMMAND attnkit_cli classify empty "empty/*.jpg" EXIT 2 MATCH
  "warning: empty: no image files \\(--recursive[^\n]*\n[^\n]*warning: empty/\\*.jpg: no file matches\n[^\n]*no image files found")
# Each bad value on its own: exit code 2 and the option named.
set(_bad_values "top-k|--top-k|0" "format|--format|xml" "device|--device|tpu" "batch_size|--batch-size|0"
                "threads|--threads|-1" "list|--list|/nonexistent" "weights|--weights|/nonexistent")
foreach(case ${_bad_values})
  string(REPLACE "|" ";" case "${case}")
  list(GET case 0 id)
  list(GET case 1 opt)
  list(GET case 2 value)
  attnkit_cli_test(NAME cli.classify_bad_value_${id} COMMAND attnkit_cli classify ${_samples} ${opt} ${value}
    EXIT 2 MATCH "${opt}")
endforeach()

# ---- --output: atomic, never clobbered without --overwrite ------------------------------------------
attnkit_cli_test(NAME cli.classify_output_refuses_to_clobber WORKING_DIRECTORY ${_ck}
  SETUP "printf keep > kept.json" AFTER "test \"$(cat kept.json)\" = keep"
  COMMAND attnkit_cli classify ${_samples} -o kept.json EXIT 1 MATCH "kept.json\" exists; pass --overwrite")
attnkit_cli_test(NAME cli.classify_output_not_a_file WORKING_DIRECTORY ${_ck}
  SETUP "rm -rf outdir && mkdir outdir" AFTER "test -d outdir"
  COMMAND attnkit_cli classify ${_samples} -o outdir --overwrite EXIT 1 MATCH "--output \"outdir\" is not a regular file")
attnkit_cli_test(NAME cli.classify_output_overwrite WORKING_DIRECTORY ${_ck}
  SETUP "printf old > out.json" AFTER "test $(grep -c '^{\"path\"' out.json) -eq 10"
  COMMAND attnkit_cli classify ${_samples} --format json -o out.json --overwrite MATCH "results in out.json")

# ---- parsed output: top-1 on the samples, CSV, parity with torchvision -------------------------------
if(ATTNKIT_PYTHON)
  set(_check ${CMAKE_CURRENT_SOURCE_DIR}/python/check_classify.py)
  # All ten samples are right, each by a wide margin (about 98% against at most 0.5% for the runner-up, calibrated;
  # the script prints both for every file).
  attnkit_cli_test(NAME cli.classify_samples_json MATCH "\nok\n"
    COMMAND ${ATTNKIT_PYTHON} ${_check} samples --attnkit ${_ak} --samples ${_samples} --min-correct 10)
  attnkit_cli_test(NAME cli.classify_csv MATCH "\nok\n"
    COMMAND ${ATTNKIT_PYTHON} ${_check} csv --attnkit ${_ak} --samples ${_samples})
  # With T = 2 every probability is the square root of the T = 1 one, renormalised, to 1e-5.
  attnkit_cli_test(NAME cli.classify_temperature_exact MATCH "\nok\n" WORKING_DIRECTORY ${_ck}
    COMMAND ${ATTNKIT_PYTHON} ${_check} temperature --attnkit ${_ak} --samples ${_samples}
            --weights ${PROJECT_SOURCE_DIR}/weights/fashion-mnist-resnet20x4.attnkit --temperature 2)
  # A torchvision ResNet-18 (refs_backbones.py) imported, then classify on refs_classify.py's image.
  attnkit_cli_test(NAME cli.classify_import_torchvision EXISTS ${_ck}/tv_resnet18.attnkit
    COMMAND attnkit_cli import ${ATTNKIT_REFS_DIR}/backbones_tv_resnet18_state.pt --arch resnet18 --out ${_ck}/tv_resnet18.attnkit --overwrite)
  set_tests_properties(cli.classify_import_torchvision PROPERTIES FIXTURES_REQUIRED refs FIXTURES_SETUP classify_tv)
  attnkit_cli_test(NAME cli.classify_torchvision_parity MATCH "\nok\n"
    COMMAND ${ATTNKIT_PYTHON} ${_check} parity --attnkit ${_ak} --weights ${_ck}/tv_resnet18.attnkit
            --image ${ATTNKIT_REFS_DIR}/classify_tv_resnet18.png --ref ${ATTNKIT_REFS_DIR}/classify_tv_resnet18.pt)
  set_tests_properties(cli.classify_torchvision_parity PROPERTIES FIXTURES_REQUIRED "refs;classify_tv")
endif()
