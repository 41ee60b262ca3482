module github.com/mlrelease/mlrelease/tools/pause

go 1.26.0
