"""Run real nnU-Net v2 on an exported dataset, as small as it goes on a CPU (tests only).

Usage: python nnunet_tiny.py WORK DATASET_ID FOLD [FOLD ...]. WORK holds nnU-Net's raw,
preprocessed and results folders. Plans and preprocesses the 2-d configuration (with nnU-Net's
dataset integrity check), prints nnU-Net's own fold membership as JSON on the last line, trains
each FOLD for one epoch of a few iterations, exports its validation probabilities and predicts
the test images into fold_<k>/test. The trainer is built directly instead of by name: nnU-Net's
lookup by name imports every trainer module, some of which need torchvision.
"""

import json
import os
import sys


def main() -> None:
    work, dataset_id, folds = sys.argv[1], int(sys.argv[2]), [int(f) for f in sys.argv[3:]]
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = os.path.join(work, name)
    # One process everywhere: nnU-Net's default pools would oversubscribe a small CI machine.
    os.environ["nnUNet_def_n_proc"] = "1"  # noqa: SIM112 (nnU-Net spells it so)
    os.environ["nnUNet_n_proc_DA"] = "1"  # noqa: SIM112

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    CPU = torch.device("cpu")

    class TinyTrainer(nnUNetTrainer):
        """nnU-Net's default trainer, one epoch of two iterations."""

        def __init__(self, plans, configuration, fold, dataset_json, device=CPU):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1

    extract_fingerprints([dataset_id], check_dataset_integrity=True, num_processes=1)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=("2d",), num_processes=(1,))
    # The trainer's data loading in this process, not in augmentation workers.
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112
    name = convert_id_to_dataset_name(dataset_id)
    pre = os.path.join(work, "preprocessed", name)

    def trainer(fold: int) -> nnUNetTrainer:
        plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
        plans["continue_training"] = False
        dataset_json = load_json(os.path.join(pre, "dataset.json"))
        return TinyTrainer(plans, "2d", fold, dataset_json, CPU)

    n_splits = len(load_json(os.path.join(pre, "splits_final.json")))
    membership = []
    reader = trainer(0)  # do_split reads the fold from the trainer; one trainer reads them all
    for fold in range(n_splits):
        reader.fold = fold
        train_keys, val_keys = reader.do_split()
        membership.append({"train": sorted(train_keys), "val": sorted(val_keys)})
    for fold in folds:
        t = trainer(fold)
        t.run_training()
        t.perform_actual_validation(save_probabilities=True)
        t.set_deep_supervision_enabled(False)  # as nnU-Net's own inference builds the network
        predictor = nnUNetPredictor(
            device=CPU, use_mirroring=False, perform_everything_on_device=False
        )
        predictor.manual_initialization(
            t.network,
            t.plans_manager,
            t.configuration_manager,
            [t.network.state_dict()],
            t.dataset_json,
            type(t).__name__,
            t.inference_allowed_mirroring_axes,
        )
        predictor.predict_from_files(
            os.path.join(work, "raw", name, "imagesTs"),
            os.path.join(t.output_folder, "test"),
            save_probabilities=True,
            overwrite=True,
            num_processes_preprocessing=1,
            num_processes_segmentation_export=1,
        )
    print(json.dumps(membership))


if __name__ == "__main__":
    main()
