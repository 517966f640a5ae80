# `attnkit calibrate` and the temperature it stores, through the program (included by
# tests/CMakeLists.txt when attnkit_cli exists). The probabilities classify shows with a temperature
# are checked in cli_classify.cmake, eval's calibration table and reliability diagram in cli_data.cmake.
# Scratch files go to build/tests/calibrate, one name per test so that the tests may run in parallel.

set(_cal ${CMAKE_CURRENT_BINARY_DIR}/calibrate)
set(_bundled ${PROJECT_SOURCE_DIR}/weights/fashion-mnist-resnet20x4.attnkit)
set(_fashion /usr/share/datasets/fashion-mnist)
file(MAKE_DIRECTORY ${_cal})

attnkit_cli_test(NAME cli.calibrate_help COMMAND attnkit_cli calibrate --help MATCH
  "--weights[^\n]*REQUIRED.*--out.*--overwrite.*--data.*--val-size.*--seed.*--temperature.*--precision[^\n]*float32.*Test data .* is refused")
attnkit_cli_test(NAME cli.calibrate_needs_weights COMMAND attnkit_cli calibrate EXIT 2 MATCH "--weights is required")
attnkit_cli_test(NAME cli.calibrate_bad_temperature COMMAND attnkit_cli calibrate --weights ${_bundled} --temperature -1
  EXIT 2 MATCH "^attnkit: --temperature: must be a positive number, got -1\n")
attnkit_cli_test(NAME cli.calibrate_temperature_excludes_data
  COMMAND attnkit_cli calibrate --weights ${_bundled} --temperature 2 --val-size 10 EXIT 2 MATCH "--temperature: stores a given temperature")

# Test data is refused before anything is read, saying why; nothing is written.
attnkit_cli_test(NAME cli.calibrate_refuses_test_split ABSENT ${_cal}/never.attnkit
  COMMAND attnkit_cli calibrate --weights ${_bundled} --data ${_fashion}/t10k-images-idx3-ubyte.gz --out ${_cal}/never.attnkit EXIT 1
  MATCH "^attnkit: \"[^\"]*t10k-images-idx3-ubyte.gz\" looks like test data \\(its name has the word \"t10k\" of a test split\\): [^\n]*\n$")
# The bundled model was trained before attnkit train stored its split: one line says what to pass.
attnkit_cli_test(NAME cli.calibrate_says_what_is_missing ABSENT ${_cal}/never.attnkit
  COMMAND attnkit_cli calibrate --weights ${_bundled} --out ${_cal}/never.attnkit EXIT 1
  MATCH "^attnkit: [^\n]*: cannot rebuild the validation split its training held out: [^\n]*no val_size[^\n]*; pass --data PATH --val-size N as given to attnkit train[^\n]*\n$")

# --temperature stores a given T (1 removes it); --out never replaces another file without --overwrite.
attnkit_cli_test(NAME cli.calibrate_set_temperature SETUP "rm -f '${_cal}/t2.attnkit'" EXISTS ${_cal}/t2.attnkit
  COMMAND attnkit_cli calibrate --weights ${_bundled} --temperature 2 --out ${_cal}/t2.attnkit
  MATCH "^calibrate: calibrated, T=2 -> [^\n]*t2.attnkit\n$")
attnkit_cli_test(NAME cli.calibrate_refuses_to_clobber SETUP "printf keep > '${_cal}/kept.attnkit'"
  AFTER "test \"$(cat '${_cal}/kept.attnkit')\" = keep"
  COMMAND attnkit_cli calibrate --weights ${_bundled} --temperature 2 --out ${_cal}/kept.attnkit EXIT 1 MATCH "kept.attnkit\" exists; pass --overwrite")

# A short run of attnkit train fits T on its validation split and stores the split in the metadata;
# calibrate, given nothing but the checkpoint, must rebuild the same 100 images and fit the same T.
attnkit_cli_test(NAME cli.calibrate_rebuilds_the_split_train_held_out WORKING_DIRECTORY ${_cal}
  COMMAND sh -c "[ -d ${_fashion} ] || { echo 'skip''ped: no Fashion-MNIST'
      exit 0
    }
    rm -rf run && $<TARGET_FILE:attnkit_cli> train --model resnet20 --width 0.25 --epochs 2 --batch-size 64 --max-images 700 \
      --val-size 100 --threads 2 --quiet --out run > train.log 2>&1 || { cat train.log
      exit 1
    }
    $<TARGET_FILE:attnkit_cli> calibrate --weights run/best.pt --out run/again.pt --threads 2 > calibrate.log 2>&1 || { cat calibrate.log
      exit 1
    }
    cat train.log calibrate.log
    t1=$(grep -o 'temperature [^:]*: NLL [^,]*' train.log | head -n 1)
    t2=$(grep -o 'temperature [^:]*: NLL [^,]*' calibrate.log)
    echo \"train: $t1, calibrate: $t2\"
    [ -n \"$t1\" ] && [ \"$t1\" = \"$t2\" ]"
  MATCH "temperature [0-9.e+-]+: NLL [0-9.]+ -> [0-9.]+, ECE [0-9.]+% -> [0-9.]+% on the 100 validation images -> run/best.pt\n"
        "on the 100 validation images -> run/last.pt\n"
        "calibration set: 100 images held out of the first 700 images of /[^\n]*fashion-mnist by attnkit train \\(--val-size 100, --seed 0\\)\n"
        "accuracy on the 100 calibration images: [0-9.]+% \\(the same at any temperature\\)\n"
        "on the 100 calibration images -> run/again.pt\n")
set_tests_properties(cli.calibrate_rebuilds_the_split_train_held_out PROPERTIES SKIP_REGULAR_EXPRESSION "skipped: no Fashion-MNIST" TIMEOUT 600)
