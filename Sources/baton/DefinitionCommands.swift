import ArgumentParser
import BatonCore
import Foundation

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check workflow definitions (JSON or YAML): print every error, or ok.",
        discussion: "Exits 1 when any file has an error.")

    @Argument(help: "Definition files.") var files: [String]

    func run() throws {
        var failed = 0
        for file in files {
            switch loadDefinition(file) {
            case .success(let workflow):
                print("\(file): ok (\(workflow.id) v\(workflow.version), \(workflow.steps.count) step\(workflow.steps.count == 1 ? "" : "s"))")
            case .failure(let errors):
                failed += 1
                print(errors.description)
            }
        }
        if failed > 0 { throw ExitCode(1) }
    }
}

struct Graph: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Draw a workflow's DAG.")

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, dot, mermaid }

    @Argument(help: "A definition file.") var file: String
    @Option(help: "text (stages, for a terminal), dot (Graphviz) or mermaid.") var format: Format = .text

    func run() throws {
        switch loadDefinition(file) {
        case .success(let workflow):
            switch format {
            case .text: print(GraphRenderer.text(workflow))
            case .dot: print(GraphRenderer.dot(workflow))
            case .mermaid: print(GraphRenderer.mermaid(workflow))
            }
        case .failure(let errors):
            print(errors.description)
            throw ExitCode(1)
        }
    }
}

/// A definition file, loaded and checked; errors are prefixed with the file name.
func loadDefinition(_ file: String) -> Result<Workflow, DefinitionErrors> {
    let data: Data
    do {
        data = try Data(contentsOf: URL(fileURLWithPath: file))
    } catch {
        return .failure(DefinitionErrors(source: file, errors: [DefinitionError(path: "", message: "cannot read the file: \(error.localizedDescription)")]))
    }
    do {
        return .success(try DefinitionLoader.load(data, source: file))
    } catch {
        return .failure(error)
    }
}
