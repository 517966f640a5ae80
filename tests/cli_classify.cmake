# `attnkit classify`, through the program (included by tests/CMakeLists.txt when attnkit_cli exists).
# Output checks that need parsing (JSON lines, CSV, parity with torchvision) are done by
# tests/python/check_classify.py and skipped where there is no Python; the rest are sh one-liners
# whose exit codes and messages CTest checks. Scratch files go to build/tests/classify, one folder
# per test so that the tests may run in parallel.
get_target_property(_defs attnkit_cli COMPILE_DEFINITIONS)
if(NOT "ATTNKIT_HAVE_OPENCV=1" IN_LIST _defs)
  return()  # built without OpenCV: no classify command
endif()

set(_ck ${CMAKE_CURRENT_BINARY_DIR}/classify)
set(_samples ${PROJECT_SOURCE_DIR}/weights/samples)
set(_ak $<TARGET_FILE:attnkit_cli>)
file(MAKE_DIRECTORY ${_ck})

add_test(NAME cli.classify_help COMMAND attnkit_cli classify --help)
set_tests_properties(cli.classify_help PROPERTIES PASS_REGULAR_EXPRESSION
  "PATH.*--list.*--recursive.*--weights.*bundled.*--top-k.*=5.*--batch-size.*=32.*--device.*auto.*cpu.*cuda.*--threads.*--format.*table.*json.*csv.*--output.*--overwrite.*Exit code")

# The bundled samples with the bundled model: a table line per file and the summary line.
add_test(NAME cli.classify_samples_table COMMAND attnkit_cli classify ${_samples} --top-k 3)
set_tests_properties(cli.classify_samples_table PROPERTIES PASS_REGULAR_EXPRESSION
  "0000-ankle-boot.png +Ankle boot \\([0-9.]+%\\), [^,\n]+ \\([0-9.]+%\\), [^,\n]+ \\([0-9.]+%\\)\n.*classify: 10 images, 0 failed, [0-9.]+ images/s, [0-9.]+ ms per image \\([a-z]+, batch 32, first batch [0-9.]+ s\\)")

# PATHs first, then the --list entries (relative to the list's folder, comments skipped); a quoted
# glob pattern is expanded by attnkit.
add_test(NAME cli.classify_list_and_glob WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "rm -rf list && mkdir list && cp ${_samples}/0002-trouser.png list/ && printf '# a comment\\n0002-trouser.png\\n\\n${_samples}/0008-sandal.png\\n' > list/inputs.txt && ${_ak} classify '${_samples}/000[01]-*.png' --list list/inputs.txt -k 1")
set_tests_properties(cli.classify_list_and_glob PROPERTIES PASS_REGULAR_EXPRESSION
  "0000-ankle-boot.png +Ankle boot[^\n]*\n[^\n]*0001-pullover.png +Pullover[^\n]*\n[^\n]*0002-trouser.png +Trouser[^\n]*\n[^\n]*0008-sandal.png +Sandal[^\n]*\nclassify: 4 images, 0 failed")

# ---- failures: one error line per bad file, the rest go on, exit code 1 -----------------------------
add_test(NAME cli.classify_missing_file WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "${_ak} classify missing.png ${_samples}/0000-ankle-boot.png 2>&1; test $? -eq 1")
set_tests_properties(cli.classify_missing_file PROPERTIES PASS_REGULAR_EXPRESSION
  "^missing.png: error: no such file\n[^\n]*0000-ankle-boot.png +Ankle boot [^\n]*\nclassify: 2 images, 1 failed")
add_test(NAME cli.classify_corrupt_png WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "rm -rf corrupt && mkdir corrupt && printf 'not a PNG at all' > corrupt/bad.png && ${_ak} classify corrupt/bad.png ${_samples}/0001-pullover.png --format json 2>&1; test $? -eq 1")
set_tests_properties(cli.classify_corrupt_png PROPERTIES PASS_REGULAR_EXPRESSION
  "^{\"path\":\"corrupt/bad.png\",\"error\":\"cannot decode the image[^\n]*\"}\n{\"path\":\"[^\"]*0001-pullover.png\",\"top\":\\[{\"label\":\"Pullover\",\"index\":2,\"prob\":[^\n]*\nclassify: 2 images, 1 failed")

# ---- usage errors: exit code 2 ---------------------------------------------------------------------
add_test(NAME cli.classify_no_inputs COMMAND sh -c "${_ak} classify 2>&1; test $? -eq 2")
set_tests_properties(cli.classify_no_inputs PROPERTIES PASS_REGULAR_EXPRESSION "Usage:.*give at least one PATH or --list FILE")
add_test(NAME cli.classify_folder_without_images WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "rm -rf empty && mkdir -p empty/sub && cp ${_samples}/0000-ankle-boot.png empty/sub/ && ${_ak} classify empty 'empty/*.jpg' 2>&1; test $? -eq 2")
set_tests_properties(cli.classify_folder_without_images PROPERTIES PASS_REGULAR_EXPRESSION
  "warning: empty: no image files \\(--recursive[^\n]*\n[^\n]*warning: empty/\\*.jpg: no file matches\n[^\n]*no image files found")
add_test(NAME cli.classify_bad_values
  COMMAND sh -c "for opt in '--top-k 0' '--format xml' '--device tpu' '--batch-size 0' '--threads -1' '--list /nonexistent' '--weights /nonexistent'; do ${_ak} classify ${_samples} $opt >/dev/null 2>&1; rc=$?; test $rc -eq 2 || { echo \"$opt: exit code $rc\"; exit 1; }; done; echo all-rejected")
set_tests_properties(cli.classify_bad_values PROPERTIES PASS_REGULAR_EXPRESSION "all-rejected")

# ---- --output: atomic, never clobbered without --overwrite ------------------------------------------
add_test(NAME cli.classify_output_refuses_to_clobber WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "printf keep > kept.json && ${_ak} classify ${_samples} -o kept.json 2>&1; test $? -eq 1 && test \"$(cat kept.json)\" = keep")
set_tests_properties(cli.classify_output_refuses_to_clobber PROPERTIES PASS_REGULAR_EXPRESSION "kept.json\" exists; pass --overwrite")
add_test(NAME cli.classify_output_not_a_file WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "rm -rf outdir && mkdir outdir && ${_ak} classify ${_samples} -o outdir --overwrite 2>&1; test $? -eq 1 && test -d outdir")
set_tests_properties(cli.classify_output_not_a_file PROPERTIES PASS_REGULAR_EXPRESSION "--output \"outdir\" is not a regular file")
add_test(NAME cli.classify_output_overwrite WORKING_DIRECTORY ${_ck}
  COMMAND sh -c "printf old > out.json && ${_ak} classify ${_samples} --format json -o out.json --overwrite 2>&1 && test $(grep -c '^{\"path\"' out.json) -eq 10 && echo ten-lines")
set_tests_properties(cli.classify_output_overwrite PROPERTIES PASS_REGULAR_EXPRESSION "results in out.json\nten-lines")

# ---- parsed output: top-1 on the samples, CSV, parity with torchvision -------------------------------
if(ATTNKIT_PYTHON)
  set(_check ${CMAKE_CURRENT_SOURCE_DIR}/python/check_classify.py)
  # All ten samples are right, each by a wide margin (about 90% against at most 1.5% for the runner-up;
  # the script prints both for every file).
  add_test(NAME cli.classify_samples_json
    COMMAND ${ATTNKIT_PYTHON} ${_check} samples --attnkit ${_ak} --samples ${_samples} --min-correct 10)
  add_test(NAME cli.classify_csv COMMAND ${ATTNKIT_PYTHON} ${_check} csv --attnkit ${_ak} --samples ${_samples})
  # A torchvision ResNet-18 (refs_backbones.py) imported, then classify on refs_classify.py's image.
  add_test(NAME cli.classify_import_torchvision
    COMMAND attnkit_cli import ${ATTNKIT_REFS_DIR}/backbones_tv_resnet18_state.pt --arch resnet18 --out ${_ck}/tv_resnet18.attnkit --overwrite)
  set_tests_properties(cli.classify_import_torchvision PROPERTIES FIXTURES_REQUIRED refs FIXTURES_SETUP classify_tv)
  add_test(NAME cli.classify_torchvision_parity
    COMMAND ${ATTNKIT_PYTHON} ${_check} parity --attnkit ${_ak} --weights ${_ck}/tv_resnet18.attnkit
            --image ${ATTNKIT_REFS_DIR}/classify_tv_resnet18.png --ref ${ATTNKIT_REFS_DIR}/classify_tv_resnet18.pt)
  set_tests_properties(cli.classify_torchvision_parity PROPERTIES FIXTURES_REQUIRED "refs;classify_tv")
  set_tests_properties(cli.classify_samples_json cli.classify_csv cli.classify_torchvision_parity PROPERTIES
    PASS_REGULAR_EXPRESSION "\nok\n")
endif()
