// Backbones with pluggable attention (ResNet family).
#pragma once
