// Backbones with pluggable attention (ResNet family), their registry, checkpoint I/O and calibration.
#pragma once

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/channel_gates.h>
#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/cifar_resnet.h>
#include <attnkit/backbones/explain.h>
#include <attnkit/backbones/faithfulness.h>
#include <attnkit/backbones/import_check.h>
#include <attnkit/backbones/inference_model.h>
#include <attnkit/backbones/model_config.h>
#include <attnkit/backbones/multiply_adds.h>
#include <attnkit/backbones/registry.h>
#include <attnkit/backbones/resnet.h>
#include <attnkit/backbones/state_dict_import.h>
