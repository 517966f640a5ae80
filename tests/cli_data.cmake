# `attnkit eval` on image data read with OpenCV: an image CSV and an ImageFolder tree built from the
# bundled samples, each with a corrupt file that must be skipped, named in one warning, and not
# counted (and, in the folder, a 16-bit grey PNG that must be read like its 8-bit original). Included from tests/CMakeLists.txt when the program is built.
set(_data ${CMAKE_CURRENT_BINARY_DIR}/cli-data)
set(_samples ${PROJECT_SOURCE_DIR}/weights/samples)
add_test(NAME cli.data_fixture COMMAND sh -c "rm -rf '${_data}' && mkdir -p '${_data}/csv' '${_data}/folder/Trouser' '${_data}/folder/Bag' \
  && cp '${_samples}'/*.png '${_data}/csv/' && printf 'not an image' > '${_data}/csv/broken.png' \
  && cp '${_samples}/0002-trouser.png' '${_data}/folder/Trouser/' && cp '${_samples}/0018-bag.png' '${_data}/folder/Bag/' \
  && cp '${_data}/csv/broken.png' '${_data}/folder/Bag/' \
  && ffmpeg -loglevel error -y -i '${_samples}/0002-trouser.png' -pix_fmt gray16be '${_data}/folder/Trouser/trouser-16bit.png' \
  && printf 'path,label\\n0019-t-shirt.png,0\\n0002-trouser.png,1\\n0001-pullover.png,2\\n0013-dress.png,3\\n0006-coat.png,4\\n0008-sandal.png,5\\n0004-shirt.png,6\\n0009-sneaker.png,7\\n0018-bag.png,8\\n0000-ankle-boot.png,9\\nbroken.png,3\\n' > '${_data}/csv/list.csv'")
set_tests_properties(cli.data_fixture PROPERTIES FIXTURES_SETUP cli_data)

# Labels by class index; the bundled model classifies all ten samples correctly.
attnkit_cli_test(NAME cli.eval_image_csv_skips_corrupt COMMAND attnkit_cli eval --data ${_data}/csv/list.csv --threads 2
  MATCH "skipped 1 unreadable image\\(s\\) of 11 in [^\n]*list.csv: [^\n]*broken.png.*accuracy: 100.00% \\(10/10\\)")
set_tests_properties(cli.eval_image_csv_skips_corrupt PROPERTIES FIXTURES_REQUIRED cli_data)
attnkit_cli_test(NAME cli.eval_image_folder_skips_corrupt COMMAND attnkit_cli eval --data ${_data}/folder --threads 2
  MATCH "skipped 1 unreadable image\\(s\\) of 4 [^\n]*broken.png.*data: [^\n]* \\(3 images\\).*accuracy: 100.00% \\(3/3\\)")
set_tests_properties(cli.eval_image_folder_skips_corrupt PROPERTIES FIXTURES_REQUIRED cli_data)
# A folder whose name is not one of the checkpoint's classes is a clear error, exit 1.
attnkit_cli_test(NAME cli.eval_image_folder_unknown_class
  SETUP "mkdir -p '${_data}/unknown/Spaceship' && cp '${_samples}/0018-bag.png' '${_data}/unknown/Spaceship/'"
  COMMAND attnkit_cli eval --data ${_data}/unknown EXIT 1
  MATCH "^attnkit: [^\n]*class folder 'Spaceship' is not one of the model's classes\n?$")
set_tests_properties(cli.eval_image_folder_unknown_class PROPERTIES FIXTURES_REQUIRED cli_data)
# The bundled model's size. Its plain ResNet-20 x4 has 4,326,602 parameters and, on 1x28x28 by hand,
# stem 28*28*64*9 + 16 * (ResNet-20 x1's stage convolutions and shortcuts, 30,908,416) + fc 256*10 =
# 494,988,800 multiply-adds (tests/test_multiply_adds.cpp has the x1 sum). CBAM in its 9 blocks adds, per
# block of C channels on HxW: the channel MLP C -> C/16 -> C on the average- and the max-pooled vector
# (2 * 2 * C^2/16 multiply-adds, 2 * C^2/16 + C/16 + C parameters) and the 7x7 conv of the 2 pooled maps
# (98 * H * W multiply-adds, 98 weights) with its BatchNorm (2): for C = 64, 128, 256 at 28, 14, 7 pixels,
# 3 * (1,024 + 4,096 + 16,384) + 3 * 98 * (784 + 196 + 49) = 367,038 multiply-adds and 3 * (580 + 2,184
# + 8,464) + 9 * 100 = 34,584 parameters: 495,355,838 and 4,361,186 in all. The timing goes to stderr,
# not into the JSON.
attnkit_cli_test(NAME cli.eval_reports_size_and_speed COMMAND attnkit_cli eval --data ${_data}/csv/list.csv --threads 2
  MATCH "eval: 10 images in [0-9.]+ s \\([0-9]+ images/s, 2 thread\\(s\\)\\)"
        "checkpoint: [^\n]* \\(resnet20-cbam, 10 classes, 4.36 M parameters, 495 M multiply-adds per image\\)\n")
set_tests_properties(cli.eval_reports_size_and_speed PROPERTIES FIXTURES_REQUIRED cli_data)
attnkit_cli_test(NAME cli.eval_json_has_the_exact_size COMMAND attnkit_cli eval --data ${_data}/csv/list.csv --json --threads 2
  MATCH "\"multiply_adds_per_image\": 495355838,\n" "\"parameters\": 4361186,\n")
set_tests_properties(cli.eval_json_has_the_exact_size PROPERTIES FIXTURES_REQUIRED cli_data)

# Calibration in eval's report: ECE and NLL at T = 1 and at the checkpoint's temperature (here one set
# by hand), the reliability diagram beside the confusion matrix, and the same numbers in --json.
set(_ak $<TARGET_FILE:attnkit_cli>)
set(_bundled ${PROJECT_SOURCE_DIR}/weights/fashion-mnist-resnet20x4.attnkit)
attnkit_cli_test(NAME cli.eval_calibration_table
  SETUP "rm -f '${_data}'/t2-confusion*.png && ${_ak} calibrate --weights ${_bundled} --temperature 2 --out ${_data}/t2.attnkit --overwrite"
  COMMAND attnkit_cli eval --weights ${_data}/t2.attnkit --data ${_data}/csv/list.csv --png ${_data}/t2-confusion.png --threads 2
  EXISTS ${_data}/t2-confusion.png ${_data}/t2-confusion.reliability.png
  MATCH "accuracy: 100.00% \\(10/10\\)[^\n]*\n\ncalibration \\(15 confidence bins\\): +ECE +NLL\n  uncalibrated \\(T = 1\\) +[0-9.]+% +[0-9.]+\n  calibrated \\(T = 2\\) +[0-9.]+% +[0-9.]+\n  temperature fitted on set by hand[^\n]*\n"
        "confusion matrix picture: [^\n]*t2-confusion.png\nreliability diagram: [^\n]*t2-confusion.reliability.png\n")
set_tests_properties(cli.eval_calibration_table PROPERTIES FIXTURES_REQUIRED cli_data)
attnkit_cli_test(NAME cli.eval_calibration_json
  SETUP "${_ak} calibrate --weights ${_bundled} --temperature 2 --out ${_data}/t2-json.attnkit --overwrite"
  COMMAND attnkit_cli eval --weights ${_data}/t2-json.attnkit --data ${_data}/csv/list.csv --json --threads 2
  MATCH "\"calibration\": {\n    \"after\": {\n      \"ece\": [0-9.e-]+,\n      \"nll\": [0-9.e-]+,\n      \"reliability\": \\[\n        {\n          \"accuracy\": null,\n          \"confidence\": null,\n          \"count\": 0\n"
        "\"temperature\": 2.0\n    },\n    \"before\": {\n" "\"bins\": 15,\n    \"calibrated\": true,\n    \"fitted_on\": \"set by hand")
set_tests_properties(cli.eval_calibration_json PROPERTIES FIXTURES_REQUIRED cli_data)
attnkit_cli_test(NAME cli.eval_uncalibrated_says_how
  SETUP "${_ak} calibrate --weights ${_bundled} --temperature 1 --out ${_data}/t1.attnkit --overwrite"
  COMMAND attnkit_cli eval --weights ${_data}/t1.attnkit --data ${_data}/csv/list.csv --threads 2
  MATCH "uncalibrated \\(T = 1\\) +[0-9.]+% +[0-9.]+\n  the checkpoint has no temperature; attnkit calibrate --weights [^\n]*t1.attnkit fits one\n")
set_tests_properties(cli.eval_uncalibrated_says_how PROPERTIES FIXTURES_REQUIRED cli_data)
