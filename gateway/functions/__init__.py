"""Functions: serving loaded ones (:mod:`.serving`) and pushing new versions (:mod:`.push`)."""
